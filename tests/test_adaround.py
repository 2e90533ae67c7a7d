"""calibrators.adaround on single layers with known inputs."""

from dataclasses import replace

import numpy as np
import pytest

from calibrators.adaround import (AdaRoundOptions, Layer, adaround, beta_at, initial_v, nearest, objective,
                                  reconstruction_loss, soft_rounding)


def gemm(rng, *, k=64, o=16, rows=2048, bits=8, relu=False, groups=1):
    """A Gemm (or grouped product) whose inputs are correlated and non-negative, as after a Relu:
    the case where rounding errors add up in the dot products."""
    mix = rng.normal(size=(groups, k, k)).astype(np.float32) / np.sqrt(k)
    x = np.maximum(np.matmul(rng.normal(size=(groups, rows, k)).astype(np.float32), mix), 0).astype(np.float32)
    w = rng.normal(0, 0.2, (groups, o, k)).astype(np.float32)
    b = rng.normal(0, 0.1, (groups, 1, o)).astype(np.float32)
    y = np.matmul(x, w.transpose(0, 2, 1)) + b
    qmax = 2 ** (bits - 1) - 1
    s = (np.abs(w).max(axis=2, keepdims=True) / qmax).astype(np.float32)
    clamp = (0.0, np.inf) if relu else (-np.inf, np.inf)
    return Layer(w, s, -qmax, qmax, x, np.clip(y, *clamp).astype(np.float32), b, clamp)


@pytest.mark.parametrize("bits", [8, 4])
def test_single_gemm_beats_nearest_and_every_rounding_variable_decides(rng, bits):
    layer = gemm(rng, bits=bits)
    train, held = layer.rows_slice(slice(0, 1536)), layer.rows_slice(slice(1536, None))
    result = adaround(train, AdaRoundOptions(), np.random.default_rng(0))
    assert np.minimum(result.soft, 1.0 - result.soft).max() <= 0.01
    near = nearest(layer)
    for part in (train, held):
        assert reconstruction_loss(part, result.codes) < 0.8 * reconstruction_loss(part, near)
    floor = np.floor(layer.weight / layer.scale)
    assert np.all((result.codes == floor) | (result.codes == floor + 1))  # only up or down
    assert result.codes.min() >= -layer.qmax and result.codes.max() <= layer.qmax


def test_same_generator_same_codes(rng):
    layer = gemm(rng, k=16, o=4, rows=256, relu=True)
    options = AdaRoundOptions(iterations=200, batch=64)
    a = adaround(layer, options, np.random.default_rng(7))
    b = adaround(layer, options, np.random.default_rng(7))
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.soft, b.soft)


@pytest.mark.parametrize("groups, o", [(1, 5), (3, 2), (4, 1)])
def test_gradient_matches_finite_differences(rng, groups, o):
    layer = gemm(rng, k=6, o=o, rows=32, relu=True, groups=groups)
    ratio = layer.weight / layer.scale
    floor = np.floor(ratio).astype(np.float32)
    v = initial_v(ratio - floor) + rng.normal(0, 0.3, ratio.shape).astype(np.float32)
    for beta in (None, 4.0):
        _, grad = objective(layer, v, floor, layer.inputs, layer.target, beta, 1e-3)
        for idx in [tuple(rng.integers(0, n) for n in v.shape) for _ in range(6)]:
            eps = 1e-2
            up, down = v.copy(), v.copy()
            up[idx] += eps
            down[idx] -= eps
            numeric = (objective(layer, up, floor, layer.inputs, layer.target, beta, 1e-3)[0]
                       - objective(layer, down, floor, layer.inputs, layer.target, beta, 1e-3)[0]) / (2 * eps)
            assert grad[idx] == pytest.approx(numeric, rel=0.05, abs=1e-4), (beta, idx)


def test_initial_v_reproduces_the_fractional_part(rng):
    rest = rng.uniform(0.01, 0.99, 100).astype(np.float32)
    h, _ = soft_rounding(initial_v(rest))
    assert np.allclose(h, rest, atol=1e-5)


def test_beta_schedule_is_off_during_warmup_then_falls_linearly():
    options = AdaRoundOptions(iterations=100, warmup=0.2, beta=(20.0, 2.0))
    assert beta_at(0, options) is None and beta_at(19, options) is None
    assert beta_at(20, options) == 20.0
    assert beta_at(60, options) == pytest.approx(11.0)
    assert beta_at(99, options) == pytest.approx(2.0 + 18.0 / 80)


def test_a_layer_that_nearest_already_reconstructs_exactly_keeps_it(rng):
    layer = gemm(rng, k=8, o=3, rows=64)
    exact = replace(layer, weight=(np.rint(layer.weight / layer.scale) * layer.scale).astype(np.float32))
    exact = replace(exact, target=(np.matmul(exact.inputs, exact.weight.transpose(0, 2, 1)) + exact.bias))
    result = adaround(exact, AdaRoundOptions(iterations=50), np.random.default_rng(0))
    assert reconstruction_loss(exact, nearest(exact)) < 1e-9
    assert reconstruction_loss(exact, result.codes) <= reconstruction_loss(exact, nearest(exact)) + 1e-9


@pytest.mark.parametrize("groups, o, relu, edge", [(1, 5, False, False), (1, 5, True, True), (3, 2, True, False),
                                                   (4, 1, False, True)])
def test_training_gradient_is_the_objectives(rng, groups, o, relu, edge):
    """The training loop's in-place gradient (rows laid out [R, G, K], buffers reused) computes
    what the reference ``objective`` does, on a minibatch, with and without the regularizer."""
    from calibrators.adaround import _Trainer

    layer = gemm(rng, k=6, o=o, rows=40, relu=relu, groups=groups)
    # edge: weights beyond the code range, where the clip of floor + h and its mask are active
    layer = replace(layer, scale=(layer.scale * (0.6 if edge else 1.05)).astype(np.float32))
    ratio = layer.weight / layer.scale
    floor = np.floor(ratio).astype(np.float32)
    assert edge == bool(((floor < layer.qmin) | (floor + 1 > layer.qmax)).any())
    v = initial_v(ratio - floor) + rng.normal(0, 0.3, ratio.shape).astype(np.float32)
    rows = np.sort(rng.permutation(40)[:16])
    trainer = _Trainer(layer, floor)
    for beta in (None, 4.0):
        _, expected = objective(layer, v, floor, layer.inputs[:, rows], layer.target[:, rows], beta, 1e-3)
        assert np.allclose(trainer.gradient(v, rows, beta, 1e-3), expected, rtol=1e-4, atol=1e-6), beta


def noisy_gemm(rng, *, k, o, rows, noise, bits=8):
    """A Gemm whose quantized-model inputs ``x^`` are the float ones plus noise (the error of the
    layers before it), ``rows`` rows plus 20,000 fresh ones to measure what the codes generalize
    to; targets from the float inputs (asymmetric reconstruction)."""
    layer = gemm(rng, k=k, o=o, rows=rows + 20000, bits=bits)
    x = layer.inputs + rng.normal(0, noise, layer.inputs.shape).astype(np.float32) * (layer.inputs > 0)
    layer = replace(layer, inputs=x.astype(np.float32))
    return layer.rows_slice(slice(0, rows)), layer.rows_slice(slice(rows, None))


def test_folds_keep_each_sample_whole_and_spread_over_the_samples():
    from calibrators.holdout import FOLDS, folds

    samples = np.repeat(np.arange(10), 3)  # three rows per sample
    f = folds(samples)
    assert all(len(set(f[samples == j])) == 1 for j in range(10))  # a sample is never split
    assert list(f[::3]) == [j % FOLDS for j in range(10)]  # sample j in fold j % FOLDS
    assert list(folds(np.zeros(8, int))) == [0, 0, 1, 1, 2, 2, 3, 3]  # one sample: blocks of rows


def test_few_rows_fitted_on_training_rows_keep_nearest(rng):
    """One row per sample, 100 samples, 256 inputs, inputs of the quantized model noisier than the
    float ones: AdaRound fits the rows it learns from and loses on fresh rows.  Judged on its
    training rows (the rule before ``calibrators.holdout``) it would be kept; judged on held-out
    samples nearest stays."""
    from calibrators.holdout import judge

    layer, fresh = noisy_gemm(rng, k=256, o=16, rows=100, noise=0.05)
    near = nearest(layer)
    fitted = adaround(layer, AdaRoundOptions(), np.random.default_rng(0)).codes
    assert reconstruction_loss(layer, fitted) < 0.7 * reconstruction_loss(layer, near)  # fits its rows
    assert reconstruction_loss(fresh, fitted) > reconstruction_loss(fresh, near)  # and loses elsewhere
    verdict = judge(layer, np.arange(100), near, AdaRoundOptions(), 0)
    assert not verdict.learned and np.array_equal(verdict.codes, near)
    assert verdict.learnings == 4 and verdict.loss_learned >= verdict.loss_nearest


@pytest.mark.parametrize("rows, per_sample, learnings", [(2048, 16, 1), (200, 1, 5)])
def test_learned_codes_kept_where_they_generalize(rng, rows, per_sample, learnings):
    """Exact inputs: learned codes beat nearest on fresh rows, with plenty of rows (one held-out
    fold) and with few (cross-validated, then learned again on every row)."""
    from calibrators.holdout import judge

    layer, fresh = noisy_gemm(rng, k=64, o=16, rows=rows, noise=0.0)
    near = nearest(layer)
    verdict = judge(layer, np.arange(rows) // per_sample, near, AdaRoundOptions(), 0)
    assert verdict.learned and verdict.learnings == learnings
    assert verdict.loss_learned < verdict.loss_nearest
    assert reconstruction_loss(fresh, verdict.codes) < 0.9 * reconstruction_loss(fresh, near)


def test_admit_shapes_every_judged_and_kept_candidate(rng):
    """The caller's ``admit`` (the x86 pair bound) is applied before a candidate is judged and to
    the codes kept."""
    from calibrators.holdout import judge

    layer, _ = noisy_gemm(rng, k=16, o=4, rows=64, noise=0.0)
    near = nearest(layer)
    seen = []

    def admit(codes):
        seen.append(codes)
        return near.copy()  # every candidate forced back to nearest: it never wins

    verdict = judge(layer, np.arange(64), near, AdaRoundOptions(iterations=50), 0, admit)
    assert len(seen) == 4 and not verdict.learned
