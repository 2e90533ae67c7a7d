"""Keep learned weight codes within x86 AVX2's int16 pair bound (``ptqcli.targets``).

For ``--cpu any`` and ``x86-avx2`` the calibration raises a channel's weight scale so that
*nearest* codes never put a same-sign pair over ``|w1| + |w2| = 128`` (``pair_safe_scales``).
AdaRound may round both codes of such a pair away from zero and break that bound by one or two
(``a + b <= 128`` allows ``ceil(a) + ceil(b) = 130``).  :func:`repair` moves codes of an
offending pair back toward zero, one step at a time, always to the other candidate AdaRound had
(``trunc(w / s)``, whose pair sum never exceeds the nearest one's), choosing the code whose
float value lies farthest from it: the smallest change of the weight itself.
"""

from __future__ import annotations

import numpy as np

from ptqcli.targets import PAIR_LIMIT, reduction_rows


def repair(op_type: str, codes: np.ndarray, ratio: np.ndarray, *, group: int = 1,
           trans_b: bool = False) -> tuple[np.ndarray, int]:
    """``codes`` (the weight's layout) with every same-sign pair in MLAS's reduction order
    (:func:`ptqcli.targets.reduction_rows`) at most ``PAIR_LIMIT``, and the number of codes
    moved.  ``ratio``: ``w / s``, the unrounded codes."""
    slots = reduction_rows(op_type, np.arange(1, codes.size + 1).reshape(codes.shape), group=group, trans_b=trans_b)
    if slots is None:
        return codes, 0
    pairs = slots.reshape(-1, 2)  # 1-based positions in codes.ravel(); 0 is the odd-K padding
    pairs = pairs[(pairs > 0).all(axis=1)] - 1
    flat = codes.ravel().astype(np.int64)
    away = np.abs(flat) - np.abs(ratio.ravel().astype(np.float64))  # > 0: rounded away from zero
    moved = 0
    for _ in range(2):  # each round fixes one unit of excess; the excess is at most two
        q = flat[pairs]
        same = np.sign(q[:, 0]) == np.sign(q[:, 1])
        over = same & (np.abs(q).sum(axis=1) > PAIR_LIMIT)
        if not over.any():
            break
        cand = pairs[over]
        gap = np.where(away[cand] > 0, away[cand], -np.inf)
        pick = cand[np.arange(len(cand)), np.argmax(gap, axis=1)]
        flat[pick] -= np.sign(flat[pick])
        away[pick] -= 1.0
        moved += len(pick)
    return flat.reshape(codes.shape).astype(codes.dtype), moved


def saturate(op_type: str, codes: np.ndarray, *, group: int = 1, trans_b: bool = False) -> tuple[np.ndarray, int]:
    """``codes`` with every same-sign pair (MLAS's reduction order) brought within ``PAIR_LIMIT``
    by lowering the larger magnitude of the pair by the excess, and the number of codes changed.
    For codes of a clipped weight range (``ptqcli.rounding.weight_range``), where a saturated
    code may exceed the bound by far more than :func:`repair` handles."""
    slots = reduction_rows(op_type, np.arange(1, codes.size + 1).reshape(codes.shape), group=group, trans_b=trans_b)
    if slots is None:
        return codes, 0
    pairs = slots.reshape(-1, 2)
    pairs = pairs[(pairs > 0).all(axis=1)] - 1
    flat = codes.ravel().astype(np.int64)
    q = flat[pairs]
    excess = np.abs(q).sum(axis=1) - PAIR_LIMIT
    over = (np.sign(q[:, 0]) == np.sign(q[:, 1])) & (excess > 0)
    if not over.any():
        return codes, 0
    cand = pairs[over]
    big = cand[np.arange(len(cand)), np.argmax(np.abs(flat[cand]), axis=1)]  # the first on a tie
    flat[big] -= np.sign(flat[big]) * excess[over]
    return flat.reshape(codes.shape).astype(codes.dtype), int(over.sum())
