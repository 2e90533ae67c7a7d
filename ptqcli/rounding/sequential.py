"""The sequential pass: AdaRound and empirical bias correction, layer after layer.

Nagel et al. (2020, section 4.3) round one layer at a time, each fed by the layers before it as
they are once quantized, so that a layer can absorb the error its inputs already carry.  Here:

1. one float pass (ONNX Runtime, the prepared model) records, for every layer, its pre-activation
   output at a bounded random sample of output positions (``adaround_samples`` rows spread evenly
   over the samples, drawn without replacement by a seeded generator: no stride that could alias
   with the layout) and its exact mean per output channel;
2. layers are put in *waves*: a layer's wave is the number of rounded layers on its longest path
   from the inputs, so the layers of one wave read nothing another of them writes.  For each wave,
   the QDQ model built from the table as it stands (learned codes and corrected biases of the
   earlier waves in place, ``ptqcli.export.qdq.insert_qdq``) gives each layer's quantized input at
   the same positions, and the exact mean of its input rows; only the nodes no earlier wave ran
   are run (``ptqcli.rounding.incremental``), so all waves together cost about one pass;
3. with per-tensor weights, each layer's weight range is chosen by its output error on those
   rows (``ptqcli.rounding.weight_range``); then each layer of the wave is rounded
   (``calibrators.adaround``), its codes kept within the x86 pair bound (``ptqcli.rounding.pairs``)
   and judged against nearest rounding on calibration samples they were not learned from (a
   layer whose learned codes do not lower the held-out loss keeps nearest:
   ``calibrators.holdout``), and its bias corrected: ``b -= E[W~ x^ + b] -
   E[W x + b]`` per output channel (Nagel et al. 2019, section 4.2, "empirical bias correction"),
   with the expectations over every position of the pass, not only the sampled rows.

The result is the table with the learned weight codes and corrected bias codes stored
(``ptqcli.quantize.stored``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import helper

from calibrators import holdout
from calibrators.adaround import AdaRoundOptions, Layer
from ptqcli import runtime
from ptqcli.export.qdq import float_copy, insert_qdq
from ptqcli.graph import Prepared, attr
from ptqcli.observe.dataset import Feed
from ptqcli.quantize.qparams import bias_floor, bias_params, dequantize, quantize, quantize_bias
from ptqcli.quantize.scale_table import ScaleTable, TensorEntry
from ptqcli.quantize.stored import Stored, codes
from ptqcli.rounding import pairs, weight_range
from ptqcli.rounding.incremental import Incremental
from ptqcli.rounding.layers import LayerView, Unsupported, view
from ptqcli.rounding.options import RoundingOptions


@dataclass(frozen=True)
class LayerReport:
    """What happened to one layer.  Losses: held-out reconstruction loss of nearest and learned
    codes (None without AdaRound); ``learnings``: times AdaRound learned the layer
    (``calibrators.holdout``); ``learned``: the learned codes were kept; ``repaired``: codes
    moved back toward zero for the x86 pair bound; ``bias_shift``: largest bias change, in
    output units (None: not corrected); ``weight_range``: per-tensor weights, the factor the
    chosen range lies below the max range (1: max kept; None: per-channel weights)."""

    anchor: str
    op_type: str
    weights: int
    rows: int
    iterations: int
    loss_nearest: float | None
    loss_learned: float | None
    learned: bool
    repaired: int
    bias_shift: float | None
    seconds: float
    weight_range: float | None = None
    learnings: int = 0


@dataclass(frozen=True)
class RoundingReport:
    layers: tuple[LayerReport, ...]
    skipped: tuple[tuple[str, str], ...]   # (layer, why it kept nearest rounding untouched)
    passes: int                            # runs over the data: the float pass, one partial QDQ run per wave
    samples: int
    seconds: float


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in dict.fromkeys(names):
        if name not in have:
            out.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out


#: The most input values the rounding passes read per pass (samples spread over the folder).
SAMPLE_VALUES = 1 << 22


def feeds(files: Sequence, inputs, options: RoundingOptions, *, batch_size: int | None = None,
          image=None) -> list[Feed]:
    """The samples the rounding passes run on: spread evenly over ``files`` (a folder sorted by
    class must not give one class only), at most ``options.adaround_samples`` of them and at most
    ``SAMPLE_VALUES`` input values (large inputs, such as pages, get fewer)."""
    from ptqcli.observe.dataset import batches, read_sample
    from ptqcli.quantize.autosearch import spread

    per_sample = sum(a[0].size for a in read_sample(files[0], inputs, image).values())
    count = max(1, min(len(files), options.adaround_samples, SAMPLE_VALUES // max(per_sample, 1)))
    return [b.feeds for b in batches(spread(files, count), inputs, batch_size=batch_size, image=image)]


def waves(prepared: Prepared, anchors: set[str]) -> dict[str, int]:
    """For each layer in ``anchors``: the number of those layers on its longest input path."""
    depth: dict[str, int] = {}
    wave: dict[str, int] = {}
    for node in prepared.index.nodes:  # topological order
        d = max((depth.get(i, 0) for i in node.input if i), default=0)
        if node.name in anchors:
            wave[node.name] = d
            d += 1
        for o in node.output:
            depth[o] = d
    return wave


@dataclass
class _Rows:
    """What the passes collect for one layer (mutable while collecting, one per layer)."""

    positions: list[np.ndarray]       # per batch: flat output positions
    targets: list[np.ndarray]         # per batch: [G, r, O/G] float pre-activation rows
    samples: list[np.ndarray]         # per batch: the calibration sample of each row (index over all batches)
    float_sum: np.ndarray | None = None
    float_count: int = 0
    inputs: list[np.ndarray] | None = None
    input_sum: np.ndarray | None = None
    input_count: int = 0


def _sample(rng: np.random.Generator, per_sample: int, count: int, samples: int) -> np.ndarray:
    picks = [j * per_sample + np.sort(rng.choice(per_sample, size=min(count, per_sample), replace=False))
             for j in range(samples)]
    return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)


def _channel_sum(spec: LayerView, pre: np.ndarray) -> tuple[np.ndarray, int]:
    if spec.op_type in ("Conv", "ConvTranspose"):
        return pre.astype(np.float64).sum(axis=tuple(i for i in range(pre.ndim) if i != 1)), pre.size // pre.shape[1]
    flat = pre.reshape(-1, pre.shape[-1]).astype(np.float64)
    return flat.sum(axis=0), flat.shape[0]


def round_weights(prepared: Prepared, table: ScaleTable, feeds: Sequence[Feed], options: RoundingOptions, *,
                  qmax: int, pair_bound: bool, progress: Callable[[int], None] | None = None,
                  ) -> tuple[ScaleTable, RoundingReport]:
    """``table`` with AdaRound codes (``options.weights == "adaround"``) and corrected biases
    (``options.bias_correction``) stored, learned on ``feeds``; ``prepared`` is the model the
    table describes.  ``qmax``: largest weight code (127, or 7 for 4-bit weights);
    ``pair_bound``: keep codes within the x86 AVX2 pair bound.  ``progress(n)`` after each layer
    with its number of weights."""
    start = time.perf_counter()
    index = prepared.index
    specs: dict[str, LayerView] = {}
    skipped: list[tuple[str, str]] = []
    position = {n.name: i for i, n in enumerate(index.nodes)}
    for anchor, group in sorted(table.groups.items(), key=lambda kv: position[kv[0]]):
        if group.kind != "compute" or group.weight is None:
            continue
        try:
            specs[anchor] = view(index, group)
        except Unsupported as exc:
            skipped.append((anchor, str(exc)))
            if progress is not None:  # counted as done: the bar covers every weight
                progress(int(np.prod(index.shape[group.weight])))
    samples = sum(len(next(iter(f.values()))) for f in feeds)
    rows = {a: _Rows([], [], []) for a in specs}
    # 1. the float pass: targets at sampled positions, exact channel means
    session = runtime.session(_with_outputs(prepared.model, [s.pre for s in specs.values()]))
    names = [s.pre for s in specs.values()]
    budget = max(1, -(-options.adaround_samples // max(samples, 1)))
    first = 0  # index of the batch's first sample
    for b, feed in enumerate(feeds):
        outs = dict(zip(names, session.run(names, feed)))
        for anchor, spec in specs.items():
            pre = outs[spec.pre]
            per = spec.positions(pre.shape)
            pos = _sample(np.random.default_rng([options.seed, position[anchor], b]), per, budget, pre.shape[0])
            r = rows[anchor]
            r.positions.append(pos)
            r.samples.append(first + pos // per)
            r.targets.append(spec.targets(pre, pos))
            s, n = _channel_sum(spec, pre)
            r.float_sum = s if r.float_sum is None else r.float_sum + s
            r.float_count += n
        first += len(next(iter(feed.values())))
    del session
    order = waves(prepared, set(specs))
    reports: list[LayerReport] = []
    runner = Incremental(feeds)
    stored = table.stored or Stored()
    for w in sorted(set(order.values())):
        members = [a for a in specs if order[a] == w]
        current = replace(table, stored=stored)
        _quantized_inputs(prepared, current, feeds, [specs[a] for a in members], rows, runner)
        for anchor in members:
            report, new_codes, entries = _round_layer(prepared, current, specs[anchor], rows[anchor], options, qmax,
                                                      pair_bound, seed=(options.seed, position[anchor]))
            if entries:
                table = replace(table, tensors={**table.tensors, **entries})
            stored = stored.merged(codes=new_codes)
            current = replace(table, stored=stored)
            rows[anchor] = _Rows([], [], [])  # free the rows
            reports.append(report)
            if progress is not None:
                progress(report.weights)
    out = replace(table, stored=stored if stored else None)
    return out, RoundingReport(tuple(reports), tuple(skipped), 1 + runner.passes, samples, time.perf_counter() - start)


def _quantized_inputs(prepared: Prepared, table: ScaleTable, feeds: Sequence[Feed], members: list[LayerView],
                      rows: dict[str, _Rows], runner: Incremental) -> None:
    """The QDQ model of ``table`` up to the members' inputs (only the nodes no earlier wave ran:
    ``ptqcli.rounding.incremental``): each member's input rows at its sampled positions and the
    sum of all its input rows."""
    graph_inputs = set(prepared.index.input_names)
    exposed = list(dict.fromkeys(s.input for s in members if s.input not in graph_inputs))
    computed = runner.run(insert_qdq(float_copy(prepared, table), table), exposed) if exposed else [{} for _ in feeds]
    for b, feed in enumerate(feeds):
        outs = computed[b]
        for spec in members:
            if spec.input in graph_inputs:  # quantized as the model's QuantizeLinear does
                p = table.tensors[spec.input].params
                x = dequantize(quantize(feed[spec.input], p), p)
            else:
                x = outs[spec.input]
            r = rows[spec.anchor]
            if r.inputs is None:
                r.inputs = []
            r.inputs.append(spec.rows(x, r.positions[b]))
            s, n = spec.mean_row(x)
            r.input_sum = s if r.input_sum is None else r.input_sum + s
            r.input_count += n


def _round_layer(prepared: Prepared, table: ScaleTable, spec: LayerView, r: _Rows, options: RoundingOptions,
                 qmax: int, pair_bound: bool, *, seed: tuple[int, int],
                 ) -> tuple[LayerReport, dict[str, np.ndarray], dict[str, TensorEntry]]:
    """One layer: its per-tensor weight range (if so), its codes, its bias; the report, the codes
    to store and the table entries that changed."""
    t0 = time.perf_counter()
    index = prepared.index
    w = index.array(spec.weight)
    wp = table.tensors[spec.weight].params
    nearest = codes(table, spec.weight, w)
    bias = index.array(spec.bias).reshape(-1) if spec.bias else np.zeros(spec.outputs, np.float32)
    x = np.concatenate(r.inputs, axis=1)
    y = np.concatenate(r.targets, axis=1)
    lo, hi = spec.clamp
    layer = Layer(spec.view(w).astype(np.float32), spec.scale(wp), -qmax, qmax, x, np.clip(y, lo, hi),
                  spec.per_channel(bias), spec.clamp)
    new: dict[str, np.ndarray] = {}
    entries: dict[str, TensorEntry] = {}
    factor = None
    if wp.axis is None and spec.weight not in (table.stored.codes if table.stored else {}):  # per tensor
        floor = bias_floor(bias, table.tensors[spec.input].params, False) if spec.bias else 0.0
        choice = weight_range.choose(spec, layer, floor, pair_bound=pair_bound)
        factor = choice.factor
        if factor != 1.0:
            wp = replace(wp, scale=(choice.scale,))
            amax = choice.scale * qmax
            entries[spec.weight] = replace(table.tensors[spec.weight], params=wp, method="output-mse",
                                           range=(-amax, amax))
            if spec.bias:
                old = table.tensors[spec.bias]
                entries[spec.bias] = replace(old, params=bias_params(table.tensors[spec.input].params, wp,
                                                                     bias.size, old.params.axis or 0))
            table = replace(table, tensors={**table.tensors, **entries})
            layer = replace(layer, scale=spec.scale(wp))
            nearest = choice.codes
            new[spec.weight] = nearest
    chosen = nearest
    loss_n = loss_l = None
    learned, repaired, iterations, learnings = False, 0, 0, 0
    if options.weights == "adaround":
        trans_b = bool(attr(spec.node, "transB", 0))
        ratio = w / _broadcast_scale(spec, wp, w)

        def admit(learned: np.ndarray) -> np.ndarray:
            """Codes ``[G, O, K]`` within the x86 pair bound (counting the codes moved)."""
            nonlocal repaired
            candidate = spec.unview(learned).astype(nearest.dtype)
            if pair_bound:
                candidate, moved = pairs.repair(spec.op_type, candidate, ratio, group=spec.groups, trans_b=trans_b)
                if factor not in (None, 1.0):  # codes saturated by a clipped range: beyond what repair moves
                    candidate, more = pairs.saturate(spec.op_type, candidate, group=spec.groups, trans_b=trans_b)
                    moved += more
                repaired = moved
            return spec.view(candidate).astype(np.int32)

        verdict = holdout.judge(layer, np.concatenate(r.samples), spec.view(nearest).astype(np.int32),
                                AdaRoundOptions(iterations=options.adaround_iters), seed, admit)
        iterations, learnings = verdict.iterations, verdict.learnings
        loss_n, loss_l = verdict.loss_nearest, verdict.loss_learned
        if verdict.learned:
            chosen, learned = spec.unview(verdict.codes).astype(nearest.dtype), True
            new[spec.weight] = chosen
    shift = None
    if options.bias_correction and spec.bias is not None and r.input_count and r.float_count:
        w_q = spec.view(chosen).astype(np.float64) * spec.scale(wp)
        mean_x = r.input_sum / r.input_count  # [G, K]
        mean_q = np.einsum("gok,gk->go", w_q, mean_x).reshape(-1) + bias
        delta = mean_q - r.float_sum / r.float_count
        corrected = (bias - delta).astype(np.float32).reshape(index.array(spec.bias).shape)
        new[spec.bias] = quantize_bias(corrected, table.tensors[spec.bias].params)
        shift = float(np.abs(delta).max(initial=0.0))
    report = LayerReport(spec.anchor, spec.op_type, int(w.size), layer.rows, iterations, loss_n, loss_l, learned,
                         repaired if learned else 0, shift, time.perf_counter() - t0, factor, learnings)
    return report, new, entries


def _broadcast_scale(spec: LayerView, p, w: np.ndarray) -> np.ndarray:
    """The weight scale shaped to divide ``w`` (its layout)."""
    return spec.unview(np.broadcast_to(spec.scale(p), spec.view(w).shape))
