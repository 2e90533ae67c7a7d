"""Observation: calibration folders to model feeds (``dataset``), one ONNX Runtime pass that
streams every observed tensor into a histogram (``collect``), histograms derived from others
(``derive``), and the observations file (``observations``)."""
