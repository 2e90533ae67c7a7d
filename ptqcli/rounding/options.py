"""Options of the weight-rounding steps (``ptq calibrate --weights/--bias-correction/--equalize/
--data-free``); a field of ``ptqcli.quantize.decide.CalibrationOptions``."""

from __future__ import annotations

from dataclasses import dataclass

from ptqcli.errors import OptionError

#: ``--weights``: how weight codes are chosen.
WEIGHTS = ("nearest", "adaround")


@dataclass(frozen=True)
class RoundingOptions:
    """``weights``: ``nearest`` or ``adaround``; ``bias_correction``: shift each bias by its
    layer's mean output error (empirical on the calibration data, analytic with ``data_free``);
    ``equalize``: cross-layer equalization before anything is observed; ``data_free``: ranges
    and bias correction from the BatchNorm statistics, no calibration data; ``adaround_iters``:
    Adam steps per layer; ``adaround_samples``: input rows (patches) kept per layer; ``seed``
    of every random choice (rows, minibatches)."""

    weights: str = "nearest"
    bias_correction: bool = False
    equalize: bool = False
    data_free: bool = False
    adaround_iters: int = 1000
    adaround_samples: int = 4096
    seed: int = 0

    @property
    def needs_model_runs(self) -> bool:
        """Whether the weights need the sequential pass over calibration data."""
        return self.weights == "adaround" or (self.bias_correction and not self.data_free)

    def validate(self) -> None:
        if self.weights not in WEIGHTS:
            raise OptionError(f"unknown weight rounding {self.weights!r}; known: {', '.join(WEIGHTS)}")
        if self.adaround_iters < 1:
            raise OptionError(f"--adaround-iters must be at least 1, got {self.adaround_iters}")
        if self.adaround_samples < 16:
            raise OptionError(f"--adaround-samples must be at least 16, got {self.adaround_samples}")
        if self.data_free and self.weights == "adaround":
            raise OptionError("--data-free has no data to learn rounding from: use --weights nearest")
