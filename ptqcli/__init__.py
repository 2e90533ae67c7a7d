"""ptq: post-training quantization of ONNX models, with an integer simulator."""

__version__ = "0.1.0"
