"""ptqcli.targets: the reduction order MLAS pairs products in, and weight scales no pair can
saturate with (swept over layouts, not only the shapes of the sample models)."""

import itertools

import numpy as np
import pytest

from ptqcli.targets import PAIR_LIMIT, Target, pair_peaks, pair_safe_scales, reduction_rows


def _mlas_order_conv(w: np.ndarray) -> np.ndarray:
    """Conv weight [M, C/g, *k] -> [M, K] with K = tap * (C/g) + c, written out with loops."""
    m, cg = w.shape[:2]
    taps = list(itertools.product(*[range(k) for k in w.shape[2:]]))
    out = np.zeros((m, len(taps) * cg), dtype=w.dtype)
    for o in range(m):
        for t, tap in enumerate(taps):
            for c in range(cg):
                out[o, t * cg + c] = w[(o, c) + tap]
    return out


@pytest.mark.parametrize("cg,kernel,m,group", [
    (1, (3, 3), 4, 1), (2, (3, 3), 4, 1), (3, (3, 3), 8, 1), (5, (1, 1), 6, 1), (4, (2, 3), 8, 2),
    (3, (5,), 4, 3), (7, (3, 3), 2, 1), (1, (1, 1), 5, 1), (2, (3, 3, 3), 4, 2),
])
def test_conv_rows_follow_nhwc_im2col_order_with_a_zero_column_for_odd_k(cg, kernel, m, group):
    w = np.arange(m * cg * int(np.prod(kernel)), dtype=np.float32).reshape((m, cg) + kernel) + 1
    rows = reduction_rows("Conv", w, group=group)
    want = _mlas_order_conv(w)
    k = want.shape[1]
    assert rows.shape == (m, 1, k + k % 2)
    np.testing.assert_array_equal(rows[:, 0, :k], want)
    if k % 2:
        assert not rows[:, 0, k:].any()


def test_depthwise_conv_and_convtranspose_form_no_pairs():
    assert reduction_rows("Conv", np.ones((8, 1, 3, 3)), group=8) is None
    assert reduction_rows("ConvTranspose", np.ones((8, 4, 3, 3))) is None
    # a depthwise conv with a channel multiplier goes through the pairing GEMM
    assert reduction_rows("Conv", np.ones((16, 1, 3, 3)), group=8) is not None


def test_gemm_and_matmul_rows_are_the_columns_of_the_output():
    w = np.arange(15, dtype=np.float32).reshape(5, 3)  # [K=5, N=3]
    np.testing.assert_array_equal(reduction_rows("Gemm", w)[:, 0, :5], w.T)
    np.testing.assert_array_equal(reduction_rows("Gemm", w.T, trans_b=True)[:, 0, :5], w.T)
    np.testing.assert_array_equal(reduction_rows("MatMul", w)[:, 0, :5], w.T)
    batched = np.stack([w, 2 * w])  # [2, K, N]: one row per batch
    np.testing.assert_array_equal(reduction_rows("MatMul", batched)[:, 1, :5], 2 * w.T)


def test_pair_peaks_counts_same_sign_pairs_only():
    rows = np.array([[[127, 127, 127, -127]], [[100, -100, -60, -70]]], dtype=np.float64)
    np.testing.assert_array_equal(pair_peaks(rows), [254, 130])


def _codes(rows, scales):
    s = np.broadcast_to(np.asarray(scales, np.float64), (rows.shape[0],))
    return np.clip(np.rint(rows / s[:, None, None]), -128, 127)


@pytest.mark.parametrize("seed", range(6))
def test_pair_safe_scales_leave_no_pair_above_the_limit_and_spare_safe_channels(seed):
    rng = np.random.default_rng(seed)
    channels, k = 32, [1, 2, 9, 27, 64, 147][seed]
    rows = rng.standard_t(3, size=(channels, 1, k + k % 2)).astype(np.float32)
    if k % 2:
        rows[..., -1] = 0
    rows[0, 0, :2] = [1e3, 1e3]                      # the worst case: two equal maxima side by side
    rows[1, 0, :] = 0.0
    rows[1, 0, 0] = 3.0                              # a lone maximum: nothing to pair with
    amax = np.abs(rows).reshape(channels, -1).max(axis=1)
    scales = (amax / 127).astype(np.float32)
    safe = pair_safe_scales(rows, scales)
    assert (pair_peaks(_codes(rows, safe)) <= PAIR_LIMIT).all()
    at8 = pair_peaks(_codes(rows, scales)) > PAIR_LIMIT
    assert at8[0] and not at8[1]
    np.testing.assert_array_equal(safe[~at8], scales[~at8])  # only channels that could saturate move
    # and not further than the bound that guarantees it: P / 127 (one float32 step of slack)
    bound = pair_peaks(rows.astype(np.float64)) / (PAIR_LIMIT - 1)
    assert (safe[at8] <= np.nextafter(bound[at8].astype(np.float32), np.float32(np.inf))).all()
    assert (safe >= scales).all()


def test_per_tensor_scale_is_raised_for_the_worst_channel():
    rows = np.array([[[1.0, 1.0]], [[0.5, -0.5]]], dtype=np.float32)
    safe = pair_safe_scales(rows, np.array([1 / 127], dtype=np.float32))
    assert safe.shape == (1,)
    assert (pair_peaks(_codes(rows, safe)) <= PAIR_LIMIT).all()


def test_targets_that_saturate():
    assert {t.value for t in Target if t.pairs_saturate} == {"any", "x86-avx2"}
