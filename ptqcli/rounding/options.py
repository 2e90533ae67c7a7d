"""Options of the weight-rounding steps (``ptq calibrate --weights/--bias-correction/--equalize/
--data-free``); a field of ``ptqcli.quantize.decide.CalibrationOptions``."""

from __future__ import annotations

from dataclasses import dataclass

from ptqcli.choices import WEIGHTS
from ptqcli.errors import Option, OptionError


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
            raise OptionError(Option("weights", self.weights), f": unknown weight rounding; known: {', '.join(WEIGHTS)}")
        if self.adaround_iters < 1:
            raise OptionError(Option("adaround_iters"), f" must be at least 1, got {self.adaround_iters}")
        if self.adaround_samples < 16:
            raise OptionError(Option("adaround_samples"), f" must be at least 16, got {self.adaround_samples}")
        if self.data_free and self.weights == "adaround":
            raise OptionError(Option("data_free"), " has no data to learn rounding from: use ",
                              Option("weights", "nearest"))
