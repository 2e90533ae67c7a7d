"""Option values that the CLI offers before it imports anything heavy (``ptq --help`` and usage
errors stay instant); the modules that implement them import them from here."""

#: The simulator's requantization arithmetics (``ptqcli.sim.fixed``): an int32 multiplier and a
#: rounding right shift (integer hardware, TFLite, most NPUs), or a float32 factor (ONNX
#: Runtime's CPU kernels, XNNPACK).
REQUANT = ("fixed", "fp32")
