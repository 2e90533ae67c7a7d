"""AdaRound: learn, per weight, whether to round up or down (Nagel et al., 2020, "Up or Down?
Adaptive Rounding for Post-Training Quantization", arXiv:2004.10568).

Rounding every weight to nearest minimizes each weight's own error, not the layer's output error:
the errors of a row of weights add up in the dot product.  AdaRound keeps each weight's code at
``floor(w / s)`` or ``floor(w / s) + 1`` and chooses by minimizing, on calibration inputs, the
squared error of the layer's output after its activation (the paper's eq. 25, with the inputs
of the already-quantized model: "asymmetric reconstruction", its section 4.3):

    min_V  || f_a(W x + b) - f_a(W~ x^ + b) ||_F^2 / rows + lambda' * f_reg(V)

    W~   = s * clip(floor(W / s) + h(V), n, p)                     (eq. 22)
    h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)         (eq. 23, the rectified
           sigmoid of Louizos et al. 2018, zeta = 1.1, gamma = -0.1)
    f_reg(V) = sum 1 - |2 h(V) - 1| ** beta                        (eq. 24, beta annealed)

where ``x`` feeds the float layer and ``x^`` the same position of the quantized model.  ``V``
starts where ``h(V)`` equals the fractional part of ``W / s`` (so the soft weights start at the
float ones), Adam minimizes the objective for a fixed number of iterations on random minibatches
of rows, the regularizer is off for the first ``warmup`` fraction and ``beta`` falls linearly from
20 to 2 after it (the schedule of the authors' and AIMET's implementations), and the final code
is ``floor(W / s) + (h(V) >= 0.5)``.

The paper weighs the regularizer with a fixed ``lambda = 0.01``; the balance of the two terms
then depends on the layer's units and size (a 4-bit layer's reconstruction error is a hundred
times its 8-bit one, and Adam only sees the ratio).  Here ``lambda' = reg_weight * L_n / N``, with
``L_n`` the reconstruction loss of nearest rounding on the training rows and ``N`` the number of
weights: the same objective with a per-layer lambda that makes the balance scale-free.  On
synthetic layers (64x16 and 288x64, 8 and 4 bits) ``reg_weight`` from 300 to 3000 gave the
lowest held-out losses, and with 1,000 iterations at a learning rate of 0.01 every ``h(V)``
reached 0 or 1 at 1,000 and 3,000; smaller weights left ``h(V)`` undecided (the gap between
the soft and the final hard rounding then costs accuracy).

Everything here is NumPy on arrays handed in: no model, no file, no global state.  A layer is
given in a grouped matrix form that covers Conv (one group per convolution group), Gemm, MatMul
and ConvTranspose: weights ``[G, O, K]``, input rows ``[G, R, K]``, outputs ``[G, R, O]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

#: Stretch of the rectified sigmoid (eq. 23).
ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundOptions:
    """``iterations`` Adam steps of ``batch`` rows with ``learning_rate``; ``reg_weight`` sets
    lambda of eq. 25 relative to the layer (module docstring); ``beta`` the (start, end) of the
    annealed exponent of eq. 24; ``warmup`` the fraction of iterations without the regularizer."""

    iterations: int = 1000
    batch: int = 256
    learning_rate: float = 1e-2
    reg_weight: float = 1000.0
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2


@dataclass(frozen=True)
class Layer:
    """One layer's reconstruction problem, in float32.

    ``weight`` ``[G, O, K]``; ``scale`` ``[G, O, 1]`` (the per-output-channel or per-tensor
    weight scale, broadcast); codes lie in ``[qmin, qmax]``; ``inputs`` ``[G, R, K]``: the rows
    the quantized model feeds the layer; ``target`` ``[G, R, O]``: the float model's output at
    the same rows, after the activation; ``bias`` ``[G, 1, O]``; ``clamp``: the fused activation
    as bounds (``(0, inf)`` for Relu, ``(-inf, inf)`` for none)."""

    weight: np.ndarray
    scale: np.ndarray
    qmin: int
    qmax: int
    inputs: np.ndarray
    target: np.ndarray
    bias: np.ndarray
    clamp: tuple[float, float] = (-np.inf, np.inf)

    @property
    def rows(self) -> int:
        return self.inputs.shape[1]

    def rows_slice(self, rows: slice) -> Layer:
        """The same layer on a subset of its rows."""
        from dataclasses import replace

        return replace(self, inputs=self.inputs[:, rows], target=self.target[:, rows])


@dataclass(frozen=True)
class Learned:
    """The learned codes ``[G, O, K]`` (int32), the final soft rounding ``h(V)`` and the number
    of Adam steps taken."""

    codes: np.ndarray
    soft: np.ndarray
    iterations: int


def nearest(layer: Layer) -> np.ndarray:
    """Round to nearest (half to even, as ONNX QuantizeLinear), saturated: the baseline codes."""
    return np.clip(np.rint(layer.weight / layer.scale), layer.qmin, layer.qmax).astype(np.int32)


def _products(inputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``x W^T`` per group: ``[G, R, K] x [G, O, K] -> [G, R, O]``.  One group is a plain 2-D
    product (NumPy's stacked matmul is several times slower than BLAS on a stack of one), one
    output per group (depthwise) a multiply and a sum."""
    if inputs.shape[0] == 1:
        return (inputs[0] @ weights[0].T)[None]
    if weights.shape[1] == 1:
        return np.einsum("grk,gk->gr", inputs, weights[:, 0])[:, :, None]
    return np.matmul(inputs, weights.transpose(0, 2, 1))


def _weight_grad(d_out: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """``d_out^T x`` per group: ``[G, R, O] x [G, R, K] -> [G, O, K]`` (see ``_products``)."""
    if inputs.shape[0] == 1:
        return (d_out[0].T @ inputs[0])[None]
    if d_out.shape[2] == 1:
        return np.einsum("gr,grk->gk", d_out[:, :, 0], inputs)[:, None]
    return np.matmul(d_out.transpose(0, 2, 1), inputs)


def _forward(layer: Layer, inputs: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pre-activation outputs ``x W^T + b`` ``[G, R, O]`` and the mask where the activation passes."""
    out = _products(inputs, weights) + layer.bias
    lo, hi = layer.clamp
    return out, (out > lo) & (out < hi)


def reconstruction_loss(layer: Layer, codes: np.ndarray, *, chunk: int = 4096) -> float:
    """Mean over rows of the squared output error summed over channels (eq. 25 without the
    regularizer), for integer ``codes`` ``[G, O, K]``; float64 sum over chunks of rows."""
    weights = (codes.astype(np.float32) * layer.scale).astype(np.float32)
    lo, hi = layer.clamp
    total = 0.0
    for start in range(0, layer.rows, chunk):
        part = slice(start, start + chunk)
        out, _ = _forward(layer, layer.inputs[:, part], weights)
        err = np.clip(out, lo, hi) - layer.target[:, part]
        total += float(np.square(err, dtype=np.float64).sum())
    return total / max(layer.rows, 1)


def soft_rounding(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h(V)`` (eq. 23) and its derivative ``dh/dV`` (zero where the clip is active)."""
    sig = 1.0 / (1.0 + np.exp(-v))
    stretched = sig * np.float32(ZETA - GAMMA) + np.float32(GAMMA)
    h = np.clip(stretched, 0.0, 1.0)
    dh = np.where((stretched > 0.0) & (stretched < 1.0), sig * (1.0 - sig) * np.float32(ZETA - GAMMA), 0.0)
    return h.astype(np.float32), dh.astype(np.float32)


def initial_v(rest: np.ndarray) -> np.ndarray:
    """``V`` with ``h(V) = rest``, the fractional part of ``W / s`` (inverse of eq. 23)."""
    rest = np.clip(rest, 1e-6, 1.0 - 1e-6)
    return (-np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)).astype(np.float32)


def regularizer(h: np.ndarray, beta: float) -> tuple[float, np.ndarray]:
    """``f_reg = sum 1 - |2h - 1| ** beta`` (eq. 24) and its derivative in ``h``."""
    d = 2.0 * h - 1.0
    a = np.abs(d)
    value = float(np.sum(1.0 - a ** beta, dtype=np.float64))
    grad = -2.0 * beta * a ** (beta - 1.0) * np.sign(d)
    return value, grad.astype(np.float32)


def objective(layer: Layer, v: np.ndarray, floor: np.ndarray, inputs: np.ndarray, target: np.ndarray,
              beta: float | None, reg_weight: float) -> tuple[float, np.ndarray]:
    """The loss of eq. 25 on the rows given (``beta`` None: no regularizer) and its gradient in
    ``V``.  Public so that a test can check the gradient by finite differences."""
    h, dh_dv = soft_rounding(v)
    q = floor + h
    inside = (q >= layer.qmin) & (q <= layer.qmax)
    weights = (layer.scale * np.clip(q, layer.qmin, layer.qmax)).astype(np.float32)
    out, passes = _forward(layer, inputs, weights)
    lo, hi = layer.clamp
    err = np.clip(out, lo, hi) - target
    rows = inputs.shape[1]
    loss = float(np.square(err, dtype=np.float64).sum()) / rows
    d_out = (2.0 / rows) * err * passes
    d_w = _weight_grad(d_out, inputs)  # [G, O, K]
    d_h = d_w * layer.scale * inside
    if beta is not None:
        reg, d_reg = regularizer(h, beta)
        loss += reg_weight * reg
        d_h = d_h + reg_weight * d_reg
    return loss, (d_h * dh_dv).astype(np.float32)


def beta_at(step: int, options: AdaRoundOptions) -> float | None:
    """The exponent at Adam step ``step`` (0-based): None during warm-up, then linear decay."""
    warm = int(options.warmup * options.iterations)
    if step < warm:
        return None
    start, end = options.beta
    rel = (step - warm) / max(options.iterations - warm, 1)
    return end + (start - end) * max(0.0, 1.0 - rel)


class _Trainer:
    """The gradient of :func:`objective` for minibatch after minibatch of one layer, computed with
    fewer passes over the weights and cheaper minibatches (the same maths; ``objective`` is the
    readable reference, and a test holds the two together):

    - the rows are laid out ``[R, G, K]`` once, so a minibatch is a gather of contiguous rows (in
      ``[G, R, K]`` a depthwise layer's minibatch is ``G`` strided gathers: 6x slower on the
      480-group layers of PP-OCRv4 rec);
    - the clip of the codes to ``[qmin, qmax]`` and its mask are applied only where a weight's
      ``floor`` lies on the boundary, the activation's clip only when it has finite bounds;
    - the regularizer's value (a second power over every weight) is not computed: Adam needs
      its gradient only; ``sign(d) |d| ** (beta - 1)`` is one power and a copysign;
    - every weight-sized temporary is a buffer reused in place, so one step costs about 30
      passes over the weights instead of about 60 (the last layer of rec has 795,000)."""

    def __init__(self, layer: Layer, floor: np.ndarray) -> None:
        g, o, k = layer.weight.shape
        self.layer, self.floor = layer, floor
        self.x = layer.inputs.reshape(layer.rows, 1, k) if g == 1 else np.ascontiguousarray(
            layer.inputs.transpose(1, 0, 2))  # [R, G, K]
        self.y = layer.target.reshape(layer.rows, 1, o) if g == 1 else np.ascontiguousarray(
            layer.target.transpose(1, 0, 2))  # [R, G, O]
        self.bias = layer.bias[:, 0]  # [G, O]
        # the few weights whose floor + h can leave [qmin, qmax] (a channel's largest weight under
        # a max range sits at qmax exactly): only these need the clip and its mask
        self.edge = np.flatnonzero((floor < layer.qmin) | (floor + 1 > layer.qmax))
        self.clamped = np.isfinite(layer.clamp).any()
        shape = layer.weight.shape
        self.sig, self.h, self.dh, self.w, self.tmp = (np.empty(shape, np.float32) for _ in range(5))
        self.active = np.empty(shape, bool)

    def _products(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """``[B, G, K] x [G, O, K] -> [B, G, O]`` (one group: one BLAS product)."""
        if w.shape[0] == 1:
            return (x[:, 0] @ w[0].T)[:, None]
        if w.shape[1] == 1:
            return np.einsum("bgk,gk->bg", x, w[:, 0])[:, :, None]
        return np.einsum("bgk,gok->bgo", x, w)

    def _weight_grad(self, d_out: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``[B, G, O] x [B, G, K] -> [G, O, K]``."""
        if x.shape[1] == 1:
            return (d_out[:, 0].T @ x[:, 0])[None]
        if d_out.shape[2] == 1:
            return np.einsum("bg,bgk->gk", d_out[:, :, 0], x)[:, None]
        return np.einsum("bgo,bgk->gok", d_out, x)

    def gradient(self, v: np.ndarray, rows: np.ndarray, beta: float | None, reg_weight: float) -> np.ndarray:
        """The gradient of eq. 25 in ``V`` on the training rows ``rows`` (``V``'s shape, float32)."""
        layer, sig, h, dh, w, tmp, active = self.layer, self.sig, self.h, self.dh, self.w, self.tmp, self.active
        special.expit(v, out=sig)
        np.multiply(sig, np.float32(ZETA - GAMMA), out=tmp)  # the stretched sigmoid (eq. 23)
        tmp += np.float32(GAMMA)
        np.greater(tmp, 0.0, out=active)
        active &= tmp < 1.0
        np.clip(tmp, 0.0, 1.0, out=h)
        np.subtract(1.0, sig, out=dh)  # dh/dV = sig (1 - sig) (zeta - gamma) where not clipped
        dh *= sig
        dh *= np.float32(ZETA - GAMMA)
        dh *= active
        np.add(self.floor, h, out=w)
        q = w.reshape(-1)[self.edge]
        inside = (q >= layer.qmin) & (q <= layer.qmax)
        w.reshape(-1)[self.edge] = np.clip(q, layer.qmin, layer.qmax)
        w *= layer.scale
        x = self.x[rows]
        err = self._products(x, w)
        err += self.bias
        if self.clamped:
            lo, hi = layer.clamp
            passes = (err > lo) & (err < hi)
            np.clip(err, lo, hi, out=err)
        err -= self.y[rows]
        err *= np.float32(2.0 / len(rows))
        if self.clamped:
            err *= passes
        grad = self._weight_grad(err, x)
        grad *= layer.scale
        grad.reshape(-1)[self.edge] *= inside
        if beta is not None:  # d f_reg / dh = -2 beta sign(d) |d| ** (beta - 1), d = 2h - 1 (eq. 24)
            np.multiply(h, 2.0, out=tmp)
            tmp -= 1.0
            np.abs(tmp, out=w)
            np.power(w, np.float32(beta - 1.0), out=w)
            np.copysign(w, tmp, out=w)
            w *= np.float32(-2.0 * beta * reg_weight)
            grad += w
        grad *= dh
        return grad


def adaround(layer: Layer, options: AdaRoundOptions, rng: np.random.Generator) -> Learned:
    """Learn the rounding of ``layer``'s weights (module docstring).  ``rng`` draws the minibatches;
    the same layer, options and generator state give the same codes."""
    ratio = layer.weight / layer.scale
    floor = np.floor(ratio).astype(np.float32)
    reg_weight = options.reg_weight * reconstruction_loss(layer, nearest(layer)) / max(layer.weight.size, 1)
    v = initial_v(ratio - floor)
    trainer = _Trainer(layer, floor)
    m = np.zeros_like(v)
    s = np.zeros_like(v)
    step_buf = np.empty_like(v)
    b1, b2, eps = 0.9, 0.999, 1e-8  # Adam (Kingma & Ba 2015) defaults
    batch = min(options.batch, layer.rows)
    order = rng.permutation(layer.rows)
    cursor = 0
    for step in range(options.iterations):
        if cursor + batch > layer.rows:
            order, cursor = rng.permutation(layer.rows), 0
        rows = np.sort(order[cursor:cursor + batch])
        cursor += batch
        grad = trainer.gradient(v, rows, beta_at(step, options), reg_weight)
        # m = b1 m + (1 - b1) g;  s = b2 s + (1 - b2) g^2;  V -= lr m^ / (sqrt(s^) + eps), in place
        m *= np.float32(b1)
        np.multiply(grad, np.float32(1 - b1), out=step_buf)
        m += step_buf
        s *= np.float32(b2)
        np.square(grad, out=step_buf)
        step_buf *= np.float32(1 - b2)
        s += step_buf
        np.multiply(s, np.float32(1.0 / (1 - b2 ** (step + 1))), out=step_buf)
        np.sqrt(step_buf, out=step_buf)
        step_buf += np.float32(eps)
        np.divide(m, step_buf, out=step_buf)
        step_buf *= np.float32(options.learning_rate / (1 - b1 ** (step + 1)))
        v -= step_buf
    h, _ = soft_rounding(v)
    codes = np.clip(floor + (h >= 0.5), layer.qmin, layer.qmax).astype(np.int32)
    return Learned(codes, h, options.iterations)
