"""Model inputs for the PP-OCR models, following rapidocr-onnxruntime 1.4.4's preprocessing.

rapidocr reads images with OpenCV (BGR order), scales pixels to [0, 1] and normalizes with
mean 0.5 and std 0.5, so inputs lie in [-1, 1].  Padding is added after normalization as zeros.
- cls (``cls_image_shape: [3, 48, 192]``): resize to height 48 keeping the aspect ratio, width at
  most 192, zero-padded on the right to 192.
- rec (``rec_img_shape: [3, 48, 320]``): height 48; the batch width is 48 x the largest aspect
  ratio, never below 320; the line is resized to ceil(48 x ratio) and zero-padded.  Lines are run
  one at a time here, so the width follows the line; we round it up to a multiple of 8.
- det (``limit_side_len: 736, limit_type: min``): rapidocr upscales so that the short side is 736
  and rounds both sides to multiples of 32.  The benchmark renders pages at a size that already
  is a multiple of 32 (480 x 640) and feeds them unscaled, to keep the run within its time budget.
"""

from __future__ import annotations

import math

import numpy as np

CLS_SHAPE = (3, 48, 192)
REC_HEIGHT, REC_MIN_WIDTH = 48, 320


def resize_bilinear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize (H, W, C) to (height, width, C) as OpenCV's INTER_LINEAR does (half-pixel centres,
    edge clamping, no antialiasing); returns float32."""
    h, w = img.shape[:2]

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0.0, n_in - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(np.float32)

    y0, y1, wy = axis(height, h)
    x0, x1, wx = axis(width, w)
    a = img.astype(np.float32)
    rows = a[y0] * (1 - wy)[:, None, None] + a[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def _normalize_chw(img_rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """BGR, resized, scaled to [-1, 1], channels first."""
    bgr = img_rgb[:, :, ::-1]
    resized = resize_bilinear(bgr, width, height) / 255.0
    return ((resized - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32)


def cls_input(img_rgb: np.ndarray) -> np.ndarray:
    """The cls model's input [1, 3, 48, 192] for one line image (H, W, 3) uint8 RGB."""
    c, height, width = CLS_SHAPE
    h, w = img_rgb.shape[:2]
    resized_w = min(width, int(math.ceil(height * w / h)))
    out = np.zeros((1, c, height, width), dtype=np.float32)
    out[0, :, :, :resized_w] = _normalize_chw(img_rgb, resized_w, height)
    return out


def rec_input(img_rgb: np.ndarray) -> np.ndarray:
    """The rec model's input [1, 3, 48, W] for one line, W >= 320 and a multiple of 8."""
    h, w = img_rgb.shape[:2]
    ratio = w / h
    width = int(REC_HEIGHT * max(REC_MIN_WIDTH / REC_HEIGHT, ratio))
    width = -(-width // 8) * 8
    resized_w = min(width, int(math.ceil(REC_HEIGHT * ratio)))
    out = np.zeros((1, 3, REC_HEIGHT, width), dtype=np.float32)
    out[0, :, :, :resized_w] = _normalize_chw(img_rgb, resized_w, REC_HEIGHT)
    return out


def det_input(img_rgb: np.ndarray) -> np.ndarray:
    """The det model's input [1, 3, H, W] for a page whose sides are multiples of 32."""
    h, w = img_rgb.shape[:2]
    assert h % 32 == 0 and w % 32 == 0, "pages are rendered at multiples of 32"
    return _normalize_chw(img_rgb, w, h)[None]
