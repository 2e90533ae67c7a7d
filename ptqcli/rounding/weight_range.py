"""A per-tensor weight range chosen by the layer's output error (``--per-tensor-weights`` with
the sequential pass: ``--bias-correction`` or ``--weights adaround``).

One scale for a whole weight tensor is set by its largest weight.  Where one weight dwarfs the
rest every other weight gets a handful of codes.  Re-parameterized networks do exactly that: the
folded identity branch of a MobileOne / RepVGG 1x1 convolution adds one large entry per channel
on the diagonal (PP-OCRv4 rec, ``p2o.Conv.28``: 22.5 at (280, 280) against a median channel range
of 0.62; quantized per tensor alone it takes the model's output SQNR to 4 dB).  Cross-layer
equalization cannot shrink it there: HardSwish sits on both sides.  Saturating such an outlier
costs little where its input is small (that channel's input has an RMS of 0.004, a ninth of the
median), and the finer scale serves every other weight.

So: the candidate ranges ``amax * 2 ** (-k / 4)``, ``k = 0 .. 16`` (down to a sixteenth), none
below the bias floor (``ptqcli.quantize.qparams.bias_floor``: the int32 bias must stay
representable); for each, the nearest codes (clipped to the code range and, for x86 AVX2
targets, pair-saturated: ``ptqcli.rounding.pairs.saturate``) and their reconstruction loss on the
layer's sampled input rows from the quantized model (``calibrators.adaround.reconstruction_loss``,
the loss AdaRound minimizes).  The lowest loss wins; ``k = 0`` (the max range) is a candidate, so
on those rows the choice is never worse than max.  This is the weights' counterpart of the MSE
range of activations, measured where it matters: at the layer's output (Nagel et al. 2021, "A
White Paper on Neural Network Quantization", section 3.3, minimizing the output MSE).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from calibrators.adaround import Layer, nearest, reconstruction_loss
from ptqcli.graph import attr
from ptqcli.rounding import pairs
from ptqcli.rounding.layers import LayerView

#: Candidate ranges: ``amax * 2 ** (-k / STEPS_PER_OCTAVE)`` for ``k = 0 .. STEPS``.
STEPS_PER_OCTAVE = 4
STEPS = 16


@dataclass(frozen=True)
class Choice:
    """The chosen scale (float32), the factor it lies below the max range's (1: max kept), the
    codes in the weight's layout, and the losses of the max range and the chosen one."""

    scale: float
    factor: float
    codes: np.ndarray
    loss_max: float
    loss: float


def _codes(spec: LayerView, layer: Layer, pair_bound: bool) -> np.ndarray:
    q = spec.unview(nearest(layer)).astype(np.int8 if layer.qmax <= 127 else np.int32)
    if pair_bound:
        q, _ = pairs.saturate(spec.op_type, q, group=spec.groups, trans_b=bool(attr(spec.node, "transB", 0)))
    return q


def choose(spec: LayerView, layer: Layer, floor: float, *, pair_bound: bool) -> Choice:
    """The per-tensor scale of ``layer`` (whose ``scale`` is the max range's) with the lowest
    reconstruction loss on ``layer``'s rows (module docstring); ``floor``: the smallest scale the
    bias allows."""
    top = float(layer.scale.reshape(-1)[0])
    best = None
    for k in range(STEPS + 1):
        scale = np.float32(top * 2.0 ** (-k / STEPS_PER_OCTAVE))
        if k and scale < floor:
            break
        candidate = replace(layer, scale=np.full_like(layer.scale, scale))
        q = _codes(spec, candidate, pair_bound)
        loss = reconstruction_loss(candidate, spec.view(q).astype(np.int32))
        if k == 0:
            loss_max = loss
        if best is None or loss < best[0]:
            best = (loss, float(scale), top / float(scale), q)
    loss, scale, factor, q = best
    return Choice(scale, factor, q, loss_max, loss)
