import math

import numpy as np
import pytest

from calibrators import histogram as H


def stream(chunks):
    h = H.empty()
    for c in chunks:
        h = H.update(h, c)
    return h


def same(a: H.Histogram, b: H.Histogram) -> bool:
    return (a.width_exp, a.offset, a.minimum, a.maximum) == (b.width_exp, b.offset, b.minimum, b.maximum) \
        and np.array_equal(a.counts, b.counts)


def test_counts_every_value_in_its_bin(rng):
    x = rng.normal(0, 2, 10_000).astype(np.float32)
    h = H.update(H.empty(), x)
    assert h.total == x.size
    assert (h.minimum, h.maximum) == (float(x.min()), float(x.max()))
    expected, _ = np.histogram(x.astype(np.float64), bins=h.edges())
    assert np.array_equal(h.counts, expected)
    # canonical width: between TARGET_BINS and 2 * TARGET_BINS bins from zero to the largest magnitude
    assert H.TARGET_BINS <= max(abs(h.minimum), abs(h.maximum)) / h.width < 2 * H.TARGET_BINS


def test_stream_equals_merge_of_shards_and_any_batching_or_order(rng):
    # later batches grow the range a lot, which forces the grid to coarsen while streaming
    chunks = [rng.normal(0, s, 3_000).astype(np.float32) for s in (0.01, 1.0, 0.5, 40.0, 3.0)]
    one_pass = stream(chunks)
    shard_a, shard_b = stream(chunks[:2]), stream(chunks[2:])
    assert same(one_pass, H.merge(shard_a, shard_b))
    assert same(one_pass, H.merge(shard_b, shard_a))
    rebatched = np.concatenate(chunks)
    assert same(one_pass, stream(np.array_split(rebatched, 17)))
    assert same(one_pass, stream(chunks[::-1]))
    assert one_pass.total == sum(c.size for c in chunks)


def test_memory_is_bounded_whatever_the_range(rng):
    h = H.empty()
    for scale in (1e-6, 1.0, 1e3, 1e6):
        h = H.update(h, rng.normal(0, scale, 1000).astype(np.float32))
    assert len(h.counts) <= 4 * H.TARGET_BINS + 2
    assert h.total == 4000


def test_all_zero_data_then_real_data():
    h = H.update(H.empty(), np.zeros(100, np.float32))
    assert (h.minimum, h.maximum, h.total) == (0.0, 0.0, 100)
    h = H.update(h, np.array([-2.0, 5.0], np.float32))
    assert h.total == 102 and (h.minimum, h.maximum) == (-2.0, 5.0)
    zero_bin = -h.offset
    assert h.counts[zero_bin] == 100


def test_exact_extremes_given_separately_widen_the_grid(rng):
    body = rng.uniform(-1, 1, 100).astype(np.float32)
    h = H.update(H.empty(), body, minimum=-50.0, maximum=3.0)
    assert (h.minimum, h.maximum) == (-50.0, 3.0)
    assert h.total == 100
    assert h.edges()[0] <= -50.0 and h.edges()[-1] > 3.0


def test_magnitudes_fold_negative_bins_onto_abs_values(rng):
    x = rng.normal(0, 1, 5000).astype(np.float32)
    h = H.update(H.empty(), x)
    mags = H.magnitudes(h)
    assert mags.sum() == x.size
    expected, _ = np.histogram(np.abs(x.astype(np.float64)), bins=np.arange(len(mags) + 1) * h.width)
    # a negative value on a bin edge folds into the neighbouring magnitude bin: allow that slack only
    assert np.abs(mags - expected).sum() <= 2 * np.count_nonzero(np.mod(x, h.width) == 0)


@pytest.mark.parametrize("value", [1e-30, 3.0, -7.5, 2.0 ** 20])
def test_single_values(value):
    h = H.update(H.empty(), np.array([value], np.float32))
    assert h.total == 1 and math.isclose(h.minimum, value, rel_tol=1e-6)


def test_push_through_a_monotonic_function_keeps_counts_and_exact_extremes(rng):
    x = rng.normal(0, 2, 50_000).astype(np.float32)
    f = lambda v: (1 / (1 + np.exp(-v))).astype(np.float32)  # noqa: E731
    pushed = H.push_through(H.update(H.empty(), x), f)
    direct = H.update(H.empty(), f(x))
    assert pushed.total == x.size
    assert pushed.minimum == pytest.approx(float(f(x).min()), rel=1e-6)
    assert pushed.maximum == pytest.approx(float(f(x).max()), rel=1e-6)
    for q in (0.01, 0.5, 0.99):
        a = np.searchsorted(np.cumsum(pushed.counts), q * x.size) * pushed.width + pushed.offset * pushed.width
        b = np.searchsorted(np.cumsum(direct.counts), q * x.size) * direct.width + direct.offset * direct.width
        assert a == pytest.approx(b, abs=0.002)


def test_push_through_a_non_monotonic_function_finds_the_inner_minimum(rng):
    x = rng.uniform(-4, 4, 20_000).astype(np.float32)
    hardswish = lambda v: (v * np.clip(v + 3, 0, 6) / 6).astype(np.float32)  # noqa: E731
    pushed = H.push_through(H.update(H.empty(), x), hardswish)
    assert pushed.minimum == pytest.approx(-0.375, abs=1e-3) and pushed.total == x.size


def test_a_list_of_arrays_counts_as_their_concatenation(rng):
    parts = [rng.normal(0, s, n).astype(np.float32) for s, n in ((1, 300), (5, 0), (3, 1000), (0.1, 7))]
    joined = np.concatenate(parts)
    base = H.update(H.empty(), rng.normal(0, 2, 500).astype(np.float32))
    assert same(H.update(base, parts), H.update(base, joined))
    assert same(H.update(base, parts, minimum=-40.0, maximum=50.0), H.update(base, joined, minimum=-40.0, maximum=50.0))
