import numpy as np
import pytest
from scipy import stats

import calibrators
from calibrators import RangeSpec
from calibrators import histogram as H
from calibrators import kl
from calibrators.kl import divergences, kl_range
from calibrators.max import max_range
from calibrators.mse import expected_errors, mse_range
from calibrators.percentile import percentile_range

SYM, ASYM = RangeSpec(symmetric=True), RangeSpec(symmetric=False)


def hist_of(x):
    return H.update(H.empty(), np.asarray(x, dtype=np.float32))


def fake_quant_error(x, lo, hi, symmetric):
    """Mean squared error of quantizing x with ONNX arithmetic onto [lo, hi]."""
    if symmetric:
        scale, zp, qmin, qmax = hi / 127, 0, -128, 127
    else:
        scale = (hi - lo) / 255
        zp, qmin, qmax = np.rint(-lo / scale), 0, 255
    q = np.clip(np.rint(x / scale) + zp, qmin, qmax)
    return float(np.mean(((q - zp) * scale - x) ** 2))


def test_max_is_the_observed_range_with_zero_included():
    h = hist_of([0.5, 2.0, 3.0])
    assert max_range(h, ASYM) == calibrators.Range(0.0, 3.0)
    assert max_range(hist_of([-4.0, 1.0]), SYM) == calibrators.Range(-4.0, 4.0)
    assert max_range(hist_of([-4.0, 1.0]), ASYM) == calibrators.Range(-4.0, 1.0)


def test_percentile_matches_numpy_within_one_bin(rng):
    x = rng.standard_t(3, 200_003).astype(np.float32)  # p * n is never a whole number
    h = hist_of(x)
    # The histogram reads a cumulative distribution, so compare with numpy's inverted-CDF
    # definition; in a sparse tail, interpolating conventions differ by a whole order statistic.
    def numpy_q(values, q):
        return np.percentile(values, q, method="inverted_cdf")

    for p in (90.0, 99.0, 99.9, 99.99):
        r = percentile_range(h, RangeSpec(True, percentile=p))
        assert abs(r.hi - numpy_q(np.abs(x), p)) <= h.width
        r = percentile_range(h, RangeSpec(False, percentile=p))
        assert abs(r.hi - numpy_q(x, p)) <= h.width
        assert abs(r.lo - numpy_q(x, 100 - p)) <= h.width


def _outside_as_read(h, lo, hi):
    """Values of ``h`` below ``lo`` or above ``hi``, reading each bin as spread evenly over its
    part between the exact extremes (how bench/clipped_mass predicts the clipped mass)."""
    edges = h.edges()
    left, right = np.maximum(edges[:-1], h.minimum), np.minimum(edges[1:], h.maximum)
    span = np.where(right > left, right - left, 1.0)
    below = np.where(right > left, np.clip((lo - left) / span, 0, 1), left < lo)
    above = np.where(right > left, np.clip((right - hi) / span, 0, 1), right > hi)
    return float((h.counts * (below + above)).sum())


def _piled_up(rng):
    """Tensors whose mass is not spread evenly inside the bins the bounds fall in."""
    x = rng.normal(0, 2, 350_000).astype(np.float32)
    yield "HardSwish (1/sqrt pile-up at its minimum -0.375)", x * np.clip(x + 3, 0, 6) / 6
    yield "Relu6 (spike at 6)", np.clip(rng.normal(2, 3, 350_000), 0, 6).astype(np.float32)
    yield "Clip(-1, 1) (spikes at both bounds)", np.clip(rng.normal(0, 1, 350_000), -1, 1).astype(np.float32)
    yield "spike inside a bin", np.concatenate([rng.normal(0, 1, 350_000), np.full(60, 3.3001)]).astype(np.float32)
    for n in (5_000, 8_800, 20_003):  # every value counted: the tail bins hold one value each
        yield f"dense, {n} values", rng.standard_t(4, n).astype(np.float32)


@pytest.mark.parametrize("spec", [SYM, ASYM], ids=["symmetric", "asymmetric"])
@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_clips_what_the_histogram_says_it_clips(rng, spec, p):
    # The bounds are bin edges (or the exact extremes): the mass the histogram shows outside the
    # range is the mass outside it, wherever inside a bin the values lie.  A bound interpolated
    # into a bin holding a pile-up clipped up to 4x the predicted mass (cls tmp_8, HardSwish).
    for name, x in _piled_up(rng):
        h = hist_of(x)
        r = percentile_range(spec=spec, hist=h)
        outside = int(((x < r.lo) | (x > r.hi)).sum())
        at_upper_edge = int((x == r.hi).sum())  # kept, though the histogram files them above hi
        predicted = _outside_as_read(h, r.lo, r.hi)
        assert outside <= predicted + 1e-6 <= outside + at_upper_edge + 2e-6, name
        drop = (1 - p / 100) * x.size + 1e-6  # each tail for asymmetric ranges, both for symmetric
        if spec.symmetric:
            assert outside <= drop, name
        else:
            assert (x < r.lo).sum() <= drop and (x > r.hi).sum() <= drop, name


def test_percentile_100_is_max(rng):
    x = rng.normal(size=1000)
    h = hist_of(x)
    assert percentile_range(h, RangeSpec(True, percentile=100.0)).hi == pytest.approx(max_range(h, SYM).hi)


def test_kl_keeps_nearly_the_full_range_of_a_uniform_distribution(rng):
    h = hist_of(rng.uniform(-1, 1, 500_000))
    assert kl_range(h, SYM).hi >= 0.97 * h.absmax


def test_kl_clips_a_heavy_tail(rng):
    x = np.concatenate([rng.normal(size=200_000), [60.0, -55.0]])
    r = kl_range(hist_of(x), SYM)
    assert 3.0 < r.hi < 20.0


def _kl_reference(bins, levels):
    """The TensorRT/MXNet loop, one candidate at a time."""
    def smooth(p, eps=1e-4):
        zeros, nonzeros = p == 0, p != 0
        eps1 = eps * zeros.sum() / nonzeros.sum()
        return p + eps * zeros - eps1 * nonzeros

    out = []
    for i in range(levels, len(bins) + 1):
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        nz = p != 0
        merged = i // levels
        q = np.zeros(i)
        for j in range(levels):
            s = j * merged
            e = s + merged if j < levels - 1 else i
            if nz[s:e].sum():
                q[s:e] = bins[s:e].sum() / nz[s:e].sum()
        q[p == 0] = 0
        out.append(stats.entropy(smooth(p), smooth(q)))
    return np.array(out)


@pytest.mark.parametrize("levels", [8, 32])
def test_kl_vectorized_equals_the_candidate_loop(rng, levels):
    bins = np.histogram(np.abs(rng.laplace(size=20_000)), bins=300)[0].astype(np.float64)
    bins[[5, 17, 140]] = 0  # empty bins exercise the smoothing
    cuts, kl = divergences(bins, levels)
    assert np.allclose(kl, _kl_reference(bins, levels), rtol=1e-9, atol=1e-12)
    assert cuts[0] == levels and cuts[-1] == len(bins)


def test_kl_search_from_a_later_first_cut_is_the_tail_of_the_full_search(rng):
    bins = rng.gamma(0.5, size=1024) * (rng.random(1024) < 0.7)
    cuts, full = divergences(bins, 128)
    for first in (128, 129, 300, 383, 384, 1000, 1024):
        tail_cuts, tail = divergences(bins, 128, first)
        assert tail_cuts[0] == first and np.allclose(tail, full[cuts >= first], rtol=1e-12, atol=0)


def _tensorrt_threshold(bins, levels, bin_width):
    """TensorRT's pick, as its GTC 2017 description and MXNet/ONNX Runtime code make it, one cut
    at a time: P = bins[:i] with the clipped mass in its last bin; Q = ``levels`` groups of
    ``i // levels`` bins (the last takes the rest), each group's mass spread over its bins that
    are non-zero in P; both smoothed; the cut ``i`` of least KL(P || Q) gives the threshold at
    the upper edge of bin ``i - 1`` (MXNet's and ONNX Runtime's convention; the slides' ``(i +
    0.5)`` bin widths is half a bin higher)."""
    def smooth(p, eps=1e-4):
        zeros, nonzeros = p == 0, p != 0
        return p + eps * zeros - eps * zeros.sum() / nonzeros.sum() * nonzeros

    best, best_kl = None, np.inf
    for i in range(levels, len(bins) + 1):
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        starts = np.arange(levels) * (i // levels)
        sizes = np.diff(np.append(starts, i))
        mass = np.add.reduceat(bins[:i], starts)
        nonzero = np.add.reduceat((p != 0).astype(np.float64), starts)
        q = np.repeat(np.divide(mass, nonzero, out=np.zeros(levels), where=nonzero > 0), sizes)
        q[p == 0] = 0
        p, q = smooth(p), smooth(q)
        p, q = p / p.sum(), q / q.sum()
        divergence = float(np.sum(p * np.log(p / q)))  # smoothing left no zeros
        if divergence < best_kl:
            best, best_kl = i, divergence
    return best * bin_width


def _fixed_histograms():
    """2,048-bin magnitude histograms of fixed draws (bin 0 set to bin 1, so that the spike rule
    for exact zeros, which TensorRT lacks, has nothing to change)."""
    rng = np.random.default_rng(2017)
    draws = {
        "laplace": np.abs(rng.laplace(size=400_000)),
        "gauss with outliers": np.abs(np.concatenate([rng.normal(size=400_000), rng.normal(0, 12, 40)])),
        "relu of a mixture": np.maximum(np.concatenate([rng.normal(1, 1, 300_000), rng.gamma(2, 2, 100_000)]), 0),
    }
    for name, x in draws.items():
        counts = np.histogram(x, bins=kl.N_BINS, range=(0.0, float(x.max())))[0].astype(np.float64)
        counts[0] = counts[1]
        yield name, counts


@pytest.mark.parametrize("name, counts", list(_fixed_histograms()), ids=lambda v: v if isinstance(v, str) else "")
def test_kl_threshold_equals_an_independent_tensorrt_implementation(name, counts):
    levels = 128  # int8: 127 steps above zero, as TensorRT
    # bin width 1: the re-binning onto 2,048 bins is then exact, and thresholds compare as bin edges
    want = _tensorrt_threshold(counts, levels, 1.0)
    kept = counts[:int(want)].sum() / counts.sum()
    assert kept >= kl.MIN_KEPT  # our guard against collapsed ranges has nothing to change here
    assert 128 < want < kl.N_BINS  # a real clip, not a boundary of the search
    assert kl._threshold(counts, 1.0, float(kl.N_BINS), levels) == want


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dist", ["normal", "laplace_outliers", "relu", "uniform"])
def test_mse_pick_never_has_larger_error_than_max(rng, dist, symmetric):
    x = {"normal": rng.normal(size=100_000),
         "laplace_outliers": np.concatenate([rng.laplace(size=100_000), [45.0]]),
         "relu": np.maximum(rng.normal(size=100_000), 0),
         "uniform": rng.uniform(-1, 3, 100_000)}[dist].astype(np.float32)
    h = hist_of(x)
    spec = RangeSpec(symmetric)
    picked, full = mse_range(h, spec), max_range(h, spec)
    # Strictly on the histogram's error model (max is one of the candidates); on the raw data with
    # real ONNX rounding the model is an estimate, so allow 1 % (a poor pick loses far more).
    e = expected_errors(h, np.array([picked.lo, full.lo]), np.array([picked.hi, full.hi]),
                        np.array([(picked.hi - picked.lo), (full.hi - full.lo)]) / (254 if symmetric else 255))
    assert e[0] <= e[1]
    assert fake_quant_error(x, picked.lo, picked.hi, symmetric) <= fake_quant_error(x, full.lo, full.hi, symmetric) * 1.01


def test_mse_expected_error_tracks_real_quantization_error(rng):
    x = rng.laplace(size=200_000).astype(np.float32)
    h = hist_of(x)
    for t in (2.0, 4.0, 8.0):
        est = expected_errors(h, np.array([-t]), np.array([t]), np.array([t / 127]))[0] / x.size
        assert est == pytest.approx(fake_quant_error(x, -t, t, True), rel=0.05)


def test_every_method_returns_a_range_containing_zero(rng):
    samples = [rng.normal(2, 0.5, 5000), -np.abs(rng.normal(size=5000)), rng.normal(size=5000), np.zeros(10)]
    for x in samples:
        h = hist_of(x)
        for name, method in calibrators.METHODS.items():
            for spec in (SYM, ASYM, RangeSpec(True, levels=65536)):
                r = method(h, spec)
                assert r.lo <= 0.0 <= r.hi, (name, spec, r)
                assert r.lo >= min(h.minimum, 0.0) - 1e-9 or spec.symmetric
                if spec.symmetric:
                    assert r.lo == -r.hi


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(calibrators.UnknownMethod, match="known: max, percentile, kl, mse"):
        calibrators.method("entropy")


def test_asymmetric_kl_searches_each_side_on_its_own(rng):
    # HardSwish output: a crowd of small negative values and a long positive tail
    z = rng.normal(0, 2, 300_000)
    x = (z * np.clip(z + 3, 0, 6) / 6).astype(np.float32)
    both = kl_range(hist_of(x), ASYM)
    # the positive side gets its share of the 255 steps of the uint8 range
    share = int(round(255 * x.max() / (x.max() - x.min()))) + 1
    positive_only = kl_range(hist_of(x[x >= 0]), RangeSpec(False, levels=share))
    assert both.hi == pytest.approx(positive_only.hi, rel=1e-6)
    assert both.lo == pytest.approx(float(x.min()))  # too few codes on that side to clip it
    # folding both signs into |x| (the symmetric search) would clip the tail much harder
    assert kl_range(hist_of(x), SYM).hi < 0.8 * both.hi


def test_asymmetric_mse_shrinks_the_two_ends_independently(rng):
    x = np.concatenate([rng.normal(0, 1, 100_000), [-3.0], rng.exponential(1, 100_000) * 3]).astype(np.float32)
    h = hist_of(x)
    r = mse_range(h, ASYM)
    full = max_range(h, ASYM)
    assert r.hi / full.hi != pytest.approx(r.lo / full.lo, abs=0.02)
    assert fake_quant_error(x, r.lo, r.hi, False) < fake_quant_error(x, full.lo, full.hi, False)


def test_kl_never_cuts_below_data_far_from_zero(rng):
    x = rng.uniform(0.096, 0.336, 50_000).astype(np.float32)  # HardSigmoid outputs of one layer
    for spec in (SYM, ASYM):
        r = kl_range(hist_of(x), spec)
        assert r.hi >= np.quantile(x, 0.999) - hist_of(x).width
