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

#: What the simulator's ``--cpu`` accepts: an accumulation above, or whichever this machine's
#: ONNX Runtime uses.
SIM_CPUS = CPUS + ("native",)

#: What calibration does with a sample that fails its checks (unreadable, wrong shape or dtype,
#: non-finite values): stop with an error naming it, or leave it out and name it.
ON_BAD_SAMPLE = ("fail", "skip")

#: How weight codes are chosen (``ptqcli.rounding``): rounded to nearest, or learned per weight
#: on calibration data (AdaRound, Nagel et al. 2020).
WEIGHTS = ("nearest", "adaround")

#: When the observation pass checkpoints by default (``ptqcli.observe.state.Every``): by the
#: clock, so that a fast model does not spend its pass writing checkpoints.
CHECKPOINT_EVERY = "30s"
