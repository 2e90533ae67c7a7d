"""Turning model outputs into results, and scoring results: CTC decoding, DB boxes, edit distance.

Written from the descriptions in rapidocr-onnxruntime 1.4.4 (``CTCLabelDecode``, ``DBPostProcess``
with thresh 0.3, box_thresh 0.5, unclip_ratio 1.6, 2x2 dilation, min_size 3, "fast" score) without
OpenCV, pyclipper or shapely: connected components stand in for OpenCV's contours, and the
unclipped minimum-area rectangle is computed exactly (offsetting a rectangle by d with round
joins and taking the minimum-area rectangle again grows each side by 2d).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

DB_THRESH, DB_BOX_THRESH, DB_UNCLIP, DB_MIN_SIZE, DB_MAX_CANDIDATES = 0.3, 0.5, 1.6, 3, 1000


def ctc_decode(probs: np.ndarray, charset: list[str]) -> str:
    """Greedy CTC decoding of one line: probs (T, C); index 0 is the blank, charset[i-1] class i."""
    idx = probs.argmax(axis=-1)
    keep = np.ones(idx.shape, dtype=bool)
    keep[1:] = idx[1:] != idx[:-1]
    keep &= idx != 0
    return "".join(charset[i - 1] for i in idx[keep])


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (insertions, deletions, substitutions cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(pred: str, truth: str) -> float:
    """1 - normalized edit distance (divided by the longer string), as PaddleOCR's RecMetric."""
    return 1.0 - edit_distance(pred, truth) / max(len(pred), len(truth), 1)


def _min_area_rect(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-area rectangle of 2-D points (N, 2): one side lies on a convex hull edge, so try
    each edge direction (rotating calipers).  Returns its centre (2,), unit axes (2, 2) as rows
    and side lengths (2,) along those axes."""
    try:
        hull = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):  # collinear or too few points
        hull = points
    edges = np.diff(np.vstack([hull, hull[:1]]), axis=0)
    angles = np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2))
    if angles.size == 0:
        angles = np.zeros(1)
    best = None
    for a in angles:
        axes = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        proj = hull @ axes.T
        lo, hi = proj.min(axis=0), proj.max(axis=0)
        area = float(np.prod(hi - lo))
        if best is None or area < best[0]:
            best = (area, ((lo + hi) / 2) @ axes, axes, hi - lo)
    _, centre, axes, sides = best
    return centre, axes, sides


def _corners(centre: np.ndarray, axes: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """The rectangle's four corners (4, 2), clockwise in image coordinates from the top left."""
    half = sides / 2
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    return centre + (signs * half) @ axes


def _box_score(prob: np.ndarray, quad: np.ndarray) -> float:
    """Mean probability inside a convex quadrilateral (rapidocr's "fast" score)."""
    h, w = prob.shape
    x0, y0 = np.clip(np.floor(quad.min(axis=0)).astype(int), 0, [w - 1, h - 1])
    x1, y1 = np.clip(np.ceil(quad.max(axis=0)).astype(int), 0, [w - 1, h - 1])
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    inside = np.ones(xs.shape, dtype=bool)
    area2 = 0.0
    for i in range(4):
        (ax, ay), (bx, by) = quad[i], quad[(i + 1) % 4]
        area2 += ax * by - bx * ay
    sign = 1.0 if area2 >= 0 else -1.0
    for i in range(4):
        (ax, ay), (bx, by) = quad[i], quad[(i + 1) % 4]
        inside &= sign * ((bx - ax) * (ys - ay) - (by - ay) * (xs - ax)) >= -0.5
    region = prob[y0:y1 + 1, x0:x1 + 1]
    return float(region[inside].mean()) if inside.any() else 0.0


def db_boxes(prob: np.ndarray) -> np.ndarray:
    """Text boxes (N, 4, 2) in pixels from a DB probability map (H, W) at the page's own size."""
    h, w = prob.shape
    bitmap = ndimage.binary_dilation(prob > DB_THRESH, structure=np.ones((2, 2), dtype=bool))
    labels, count = ndimage.label(bitmap, structure=np.ones((3, 3), dtype=bool))
    boxes = []
    for k, region in enumerate(ndimage.find_objects(labels)[:DB_MAX_CANDIDATES], 1):
        ys, xs = np.nonzero(labels[region] == k)
        points = np.stack([xs + region[1].start, ys + region[0].start], axis=1).astype(np.float64)
        centre, axes, sides = _min_area_rect(points)
        if sides.min() < DB_MIN_SIZE:
            continue
        if _box_score(prob, _corners(centre, axes, sides)) < DB_BOX_THRESH:
            continue
        distance = sides.prod() * DB_UNCLIP / (2 * sides.sum())
        sides = sides + 2 * distance
        if sides.min() < DB_MIN_SIZE + 2:
            continue
        quad = np.rint(_corners(centre, axes, sides))
        quad[:, 0] = np.clip(quad[:, 0], 0, w - 1)
        quad[:, 1] = np.clip(quad[:, 1], 0, h - 1)
        x0, y0 = quad.min(axis=0)
        x1, y1 = quad.max(axis=0)
        if x1 - x0 <= 3 or y1 - y0 <= 3:
            continue
        boxes.append(quad)
    return np.array(boxes, dtype=np.float64).reshape(-1, 4, 2)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of axis-aligned boxes a (N, 4) and b (M, 4) as x0, y0, x1, y1."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_boxes(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> int:
    """Number of one-to-one matches with IoU > ``iou`` (greedy, best IoU first) between predicted
    quads (N, 4, 2) and true boxes (M, 4) x0, y0, x1, y1; quads are compared by their bounding box."""
    if len(pred) == 0 or len(truth) == 0:
        return 0
    p = np.concatenate([pred.min(axis=1), pred.max(axis=1)], axis=1)
    m = _iou(p, np.asarray(truth, dtype=np.float64))
    matches = 0
    while m.size and m.max() > iou:
        i, j = np.unravel_index(int(m.argmax()), m.shape)
        matches += 1
        m[i, :] = -1
        m[:, j] = -1
    return matches


def hmean(matches: int, predicted: int, true: int) -> float:
    """Harmonic mean of precision matches/predicted and recall matches/true (0 when both are 0)."""
    precision = matches / predicted if predicted else 0.0
    recall = matches / true if true else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def quads_to_boxes(quads: np.ndarray) -> np.ndarray:
    """Axis-aligned boxes (N, 4) x0, y0, x1, y1 of quads (N, 4, 2)."""
    return np.concatenate([quads.min(axis=1), quads.max(axis=1)], axis=1) if len(quads) else np.zeros((0, 4))
