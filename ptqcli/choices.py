"""Option values that the CLI offers before it imports anything heavy (``ptq --help`` and usage
errors stay instant); the modules that implement them import them from here."""

#: The simulator's requantization arithmetics (``ptqcli.sim.fixed``): an int32 multiplier and a
#: rounding right shift (integer hardware, TFLite, most NPUs), or a float32 factor (ONNX
#: Runtime's CPU kernels, XNNPACK).
REQUANT = ("fixed", "fp32")

#: The accumulation arithmetics the simulator models (``ptqcli.sim.pairs``): every product
#: summed exactly (x86 VNNI, ARM, integer accelerators), or in saturating int16 pairs (x86 AVX2
#: without VNNI).
CPUS = ("exact", "x86-avx2")
