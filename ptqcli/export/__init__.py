"""Export: the prepared float model and a scale table to a QDQ ONNX model (``qdq``)."""
