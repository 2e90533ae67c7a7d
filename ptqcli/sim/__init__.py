"""NumPy integer simulator: the arithmetic an int8/int16 accelerator (or ONNX Runtime's CPU
kernels, ``requant="fp32"``) performs on a scale table.

Usage::

    from ptqcli.sim import simulate
    out = simulate("model.onnx", "model.table.json", {"image": x}, tensors=["logits"])
    out.tensors["logits"].codes, out.tensors["logits"].values

For many batches build the program once: ``program = build(prepare(path), table)`` and call
``run(program, feeds)``.

Arithmetic (followed exactly; the tests check each rule)
========================================================

Notation: ``q`` codes, ``s`` scale (float32 value from the table), ``zp`` zero point;
``round`` is round half to even everywhere; ``sat_T`` clamps to the codes of dtype ``T``.

1. Quantize (model inputs, and results of nodes computed in float):
   ``q = sat_T(round(x / s) + zp)`` with ``x / s`` in float32: ONNX QuantizeLinear.
2. Constants: weights ``q_w`` (int8, per output channel) exactly as the QDQ export writes them;
   biases int32 ``round(b / (s_x s_w))``.
3. Conv, ConvTranspose, Gemm, MatMul: ``acc = sum (q_x - zp_x)(q_w - zp_w) + bias`` in int32.
   (Conv forms it as ``sum q_x (q_w - zp_w) - zp_x sum (q_w - zp_w)``, padding with ``zp_x``:
   the same integer.)  The sum is computed by BLAS in float32 when every partial sum is provably
   below 2**24 (``max_c sum_k |q_w - zp_w| * max |q_x| < 2**24``, from the actual weight codes),
   in float64 below 2**53, else in int64: all three are exact.  MatMul of two activations checks
   ``K * max|a - zp_a| * max|b - zp_b|`` the same way at run time.
4. int32 overflow: when the static bound of ``|acc + bias|`` exceeds 2**31 - 1 the accumulator
   is formed in int64, wrapped to int32 (two's complement, as a 32-bit register does) and every
   wrapped element is reported (``SimOutputs.overflows``); it is never silent.
5. Requantize: ``y = sat_T(zp_y + round(acc * m / 2**n))`` with ``M = s_x s_w / s_y`` (per
   channel) held as an integer ``m`` and a right shift ``n``; ``m`` has ``b = min(31, 53 -
   bits(B))`` significant bits for a static bound ``B`` of ``|acc|`` (so every product is exact
   in float64; 31 bits for accumulators below 2**22), or ``min(31, 62 - bits(B))`` bits with
   int64 products when that would leave fewer than 24 (``fixed.multiplier``).  ``round`` is half
   to even, on the exact product.
6. Fused Relu / Clip: the clamp bounds are quantized into the output codes
   (``lo = quantize(min)``, ``hi = quantize(max)``; Relu: ``lo = zp_y``), applied with the
   saturation.  Exact: quantization is monotonic.
7. Add: ``y = zp_y + round((m_a (q_a - zp_a) + m_b (q_b - zp_b)) / 2**n)``, ``m_i = round(s_i /
   s_y 2**n)``, ``n`` giving the larger ``m_i`` 31 bits.  Mul: ``y = zp_y + round(M p)``, ``p =
   (q_a - zp_a)(q_b - zp_b)``, ``M = s_a s_b / s_y`` as in 5.
8. Lookup tables (Sigmoid, Tanh, HardSigmoid, HardSwish, SiLU, GELU/Erf, LeakyRelu, Exp, any
   single-input elementwise chain): ``y = T[q]``, ``T[q] = quantize(f(dequantize(q)))`` over all
   256 or 65536 input codes, ``f`` evaluated once in float32.
9. AveragePool, GlobalAveragePool, ReduceMean: ``sum (q - zp_x)`` in int32, then
   ``y = zp_y + round(sum * M)``, ``M = s_x / (s_y * count)`` as in 5 (one ``M`` per divisor).
10. MaxPool, GlobalMaxPool, ReduceMax/Min, Reshape, Transpose, Flatten, Squeeze, Unsqueeze,
    Gather, Slice, Split, Pad, Expand, Tile, DepthToSpace, SpaceToDepth, Identity: codes moved
    unchanged (padding writes the code of the pad value; MaxPool pads with the lowest code).
    Concat: inputs share the output's parameters (otherwise rescaled as in 5).
11. Resize: nearest moves codes (rescaled as in 5 if the output's parameters differ); linear
    uses Q15 weights per axis and exact int64 sums, then one requantization (``resize.py``).
12. Softmax: exp table over code differences in Q24, int64 row sums, integer division with
    rounding half to even (``normalize.py``).  LayerNormalization: int64 mean and variance of
    the codes, integer square root, Q24 normalized values, per-channel fixed-point affine
    (``normalize.py``).
13. ``requant="fp32"`` (``ptq simulate --requant fp32``) replaces the integer multiplier of
    rules 5, 7 and 9 and the rescaling of 10 and 11 by float32 arithmetic exactly as ONNX
    Runtime's CPU kernels (MLAS, x86) evaluate it: the factor in float32 one operation at a time
    (Conv/Gemm/MatMul ``s_x * s_w / s_y``, pools ``s_x / (s_y * count)``), ``y = sat_T(zp_y +
    round(float32(acc) * factor))``; Add ``fma(q_a, r_a, fma(q_b, r_b, c))`` with ``r = s / s_y``,
    ``c = zp_y - (r_a zp_a + r_b zp_b)``; Mul ``float32(p) * (s_a s_b / s_y) + zp_y``; a rescale
    is DequantizeLinear then QuantizeLinear.  The two arithmetics part only at ties: a float32
    factor that lost its low bits puts ``acc * factor`` exactly on ``k + 1/2`` (rounded to even)
    where the exact product is a hair off it.
14. ``cpu="x86-avx2"`` (``ptq simulate --cpu x86-avx2``) forms the accumulators of rule 3 as
    ONNX Runtime does on x86 CPUs with AVX2 but without VNNI: products of raw activation codes
    (int8 codes shifted by 128) and weight codes, adjacent pairs along the reduction (Conv: kernel
    taps row-major, input channel fastest) added and saturated to int16, then summed in int32;
    the zero point is corrected afterwards.  Depthwise Conv and MatMul of two activations stay
    exact.  Every saturated pair sum is counted per node (``SimOutputs.saturations``); see
    :mod:`ptqcli.targets` and :mod:`ptqcli.sim.pairs`.
15. Anything else runs in float (ONNX Runtime on the node alone, on dequantized inputs), and its
    quantized outputs are quantized as in 1.  Every such node is listed in
    ``SimOutputs.fallbacks`` with the reason.  So that results never depend on how samples are
    batched, row-wise float nodes run one sample at a time, always on 64-byte aligned copies
    (ONNX Runtime's vectorized reductions round differently for another row count or alignment).

Checks: ``ptq simulate`` compares the simulator with the float model and with ONNX Runtime running
the exported QDQ model; ``--per-layer`` also feeds every integer kernel ONNX Runtime's own input
codes ("local" agreement), which separates a different arithmetic from differences carried in
from earlier layers.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import numpy as np

from ptqcli.graph import Prepared, prepare
from ptqcli.quantize.scale_table import ScaleTable
from ptqcli.quantize.scale_table import load as load_table
from ptqcli.sim.pairs import CPUS, Saturation
from ptqcli.sim.program import Fallback, Program, build
from ptqcli.sim.run import SimOutputs, SimTensor, run

__all__ = ["CPUS", "Fallback", "Program", "Saturation", "SimOutputs", "SimTensor", "build", "resolve_cpu", "run",
           "simulate"]


def simulate(model: Prepared | str | os.PathLike, table: ScaleTable | str | os.PathLike,
             inputs: Mapping[str, np.ndarray], *, tensors: Iterable[str] = (), requant: str = "fixed",
             cpu: str = "exact") -> SimOutputs:
    """Simulate ``model`` quantized by ``table`` on one batch of ``inputs``.

    Returns the graph outputs and every tensor named in ``tensors``: integer codes (for
    quantized tensors) and float32 values (dequantized codes, or the float result).
    ``requant``: ``fixed`` (integer multiplier and shift) or ``fp32`` (float32 factor);
    ``cpu``: ``exact`` accumulation, ``x86-avx2`` (int16 pair sums), or ``native`` (whichever
    of the two this machine's ONNX Runtime uses, see :func:`resolve_cpu`)."""
    prepared = model if isinstance(model, Prepared) else prepare(model)
    loaded = table if isinstance(table, ScaleTable) else load_table(table)
    tensors = tuple(tensors)
    program = build(prepared, loaded, keep=tensors, requant=requant, cpu=resolve_cpu(cpu))
    return run(program, inputs, keep=tensors)


def resolve_cpu(cpu: str) -> str:
    """``native`` -> the accumulation this machine's ONNX Runtime uses (measured by
    :func:`ptqcli.runtime.int8_arithmetic`); other names unchanged."""
    if cpu != "native":
        return cpu
    from ptqcli.runtime import int8_arithmetic

    return int8_arithmetic().cpu
