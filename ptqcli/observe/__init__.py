"""Observation: calibration folders to model feeds (``dataset``), one ONNX Runtime pass that
streams every observed tensor into a histogram (``collect``), checkpointed, resumed or sharded
over Dask workers (``run_pass``, ``checkpoint``, ``distributed``), histograms derived from
others (``derive``), and the observations file (``observations``)."""
