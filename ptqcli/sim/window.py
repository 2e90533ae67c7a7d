"""Sliding windows over the spatial axes of ``[N, C, *spatial]`` tensors (Conv and pooling).

Output sizes and padding follow the ONNX Conv / pooling specification: explicit ``pads``
(``[b_1, ..., b_k, e_1, ..., e_k]``) or ``auto_pad`` SAME_UPPER / SAME_LOWER / VALID, ``strides``,
``dilations`` and, for pooling, ``ceil_mode`` (a last window must start inside the input or the
begin padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx

from ptqcli.errors import UnsupportedError
from ptqcli.graph import attr, text_attr


@dataclass(frozen=True)
class Geometry:
    """Per spatial axis: kernel size, stride, dilation, begin/end padding, and the extra end
    padding that ``ceil_mode`` windows reach (never counted as input)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    begin: tuple[int, ...]
    end: tuple[int, ...]
    ceil_extra: tuple[int, ...] = ()

    def out_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        extra = self.ceil_extra or (0,) * len(spatial)
        return tuple((n + b + e + c - d * (k - 1) - 1) // s + 1 for n, b, e, c, k, s, d in zip(
            spatial, self.begin, self.end, extra, self.kernel, self.strides, self.dilations))


def geometry(node: onnx.NodeProto, spatial: tuple[int, ...], kernel: tuple[int, ...], *,
             pooling: bool = False) -> Geometry:
    """The window geometry of ``node`` for an input of ``spatial`` size and a ``kernel``."""
    k = len(kernel)
    strides = tuple(attr(node, "strides", [1] * k))
    dilations = tuple(attr(node, "dilations", [1] * k))
    auto_pad = text_attr(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-n // s) for n, s in zip(spatial, strides)]
        total = [max((o - 1) * s + d * (kk - 1) + 1 - n, 0)
                 for o, s, d, kk, n in zip(out, strides, dilations, kernel, spatial)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        begin, end = [0] * k, [0] * k
    elif auto_pad == "NOTSET":
        pads = list(attr(node, "pads", [0] * (2 * k)))
        begin, end = pads[:k], pads[k:]
    else:
        raise UnsupportedError(f"node {node.name!r}: unknown auto_pad {auto_pad!r}")
    extra = [0] * k
    if pooling and attr(node, "ceil_mode", 0):
        for i, (n, b, e, kk, s, d) in enumerate(zip(spatial, begin, end, kernel, strides, dilations)):
            span = n + b + e - d * (kk - 1) - 1
            out = -(-span // s) + 1
            if (out - 1) * s >= n + b:  # the last window would start in the end padding
                out -= 1
            extra[i] = max((out - 1) * s + d * (kk - 1) + 1 - (n + b + e), 0)
    return Geometry(tuple(kernel), strides, dilations, tuple(begin), tuple(end), tuple(extra))


def pad(x: np.ndarray, geo: Geometry, value, extra_value=None, dtype=None) -> np.ndarray:
    """``x`` ``[N, C, *spatial]`` padded with ``value`` (explicit pads) and ``extra_value``
    (default ``value``) where only ceil-mode windows reach, in ``dtype`` (default ``x``'s): the
    conversion happens in the one copy the padding makes."""
    extra = geo.ceil_extra or (0,) * len(geo.kernel)
    if any(b < 0 or e < 0 for b, e in zip(geo.begin, geo.end)):
        raise UnsupportedError("negative pads are not supported")
    if not any(geo.begin + geo.end + tuple(extra)):
        return x if dtype is None else x.astype(dtype)
    spatial = x.shape[2:]
    out = np.full(x.shape[:2] + tuple(n + b + e + c for n, b, e, c in zip(spatial, geo.begin, geo.end, extra)),
                  value, dtype=x.dtype if dtype is None else dtype)
    if extra_value is not None and extra_value != value:
        for axis, (n, b, e, c) in enumerate(zip(spatial, geo.begin, geo.end, extra)):
            if c:
                out[(slice(None),) * (2 + axis) + (slice(n + b + e, None),)] = extra_value
    out[(slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(geo.begin, spatial))] = x
    return out


def taps(padded: np.ndarray, geo: Geometry) -> Iterator[np.ndarray]:
    """For each kernel offset (row-major), the strided view ``[N, C, *out_spatial]`` of the
    padded input that this tap of every window reads.  Looping over the few taps with whole-
    tensor operations is much faster in NumPy than reducing a 6-D sliding-window view."""
    out = tuple((n - d * (k - 1) - 1) // s + 1
                for n, k, s, d in zip(padded.shape[2:], geo.kernel, geo.strides, geo.dilations))
    for offset in np.ndindex(*geo.kernel):
        index = (slice(None), slice(None)) + tuple(
            slice(o * d, o * d + s * (m - 1) + 1, s) for o, d, s, m in zip(offset, geo.dilations, geo.strides, out))
        yield padded[index]


@dataclass(frozen=True)
class FlatWindows:
    """Stride-1 windows read from the padded input flattened over its spatial axes: tap ``i``
    of every window is the contiguous slice ``taps[i]`` (``[N, C, length]``).  Position ``p`` of
    a slice is the window at padded coordinates ``unravel(p)``, so along every axis but the
    first a slice also holds windows that run past the end; :meth:`crop` drops them from a
    result ``[..., length]``.  Contiguous slices copy and multiply several times faster than
    the strided views of :func:`taps`."""

    taps: tuple[np.ndarray, ...]
    length: int
    wide: tuple[int, ...]   # the result's spatial shape before cropping
    out: tuple[int, ...]

    def crop(self, result: np.ndarray) -> np.ndarray:
        r = result.reshape(result.shape[:-1] + self.wide)
        return r[(Ellipsis,) + tuple(slice(0, o) for o in self.out[1:])]


def flat_windows(x: np.ndarray, geo: Geometry, value, dtype: type) -> FlatWindows | None:
    """``x`` ``[N, C, *spatial]`` padded with ``value``, converted to ``dtype`` and cut into
    :class:`FlatWindows`; None when a stride is not 1 or a window has ceil-mode padding."""
    if any(s != 1 for s in geo.strides) or any(geo.ceil_extra):
        return None
    padded_shape = tuple(n + b + e for n, b, e in zip(x.shape[2:], geo.begin, geo.end))
    out = tuple(n - d * (k - 1) for n, k, d in zip(padded_shape, geo.kernel, geo.dilations))
    if any(o < 1 for o in out):
        return None
    steps = [int(np.prod(padded_shape[i + 1:])) for i in range(len(padded_shape))]
    offsets = [sum(o * d * s for o, d, s in zip(tap, geo.dilations, steps)) for tap in np.ndindex(*geo.kernel)]
    length = out[0] * steps[0]
    # The last tap's slice reaches past the padded input by its offset within a row: extra rows.
    rows = -(-(max(offsets) + length - padded_shape[0] * steps[0]) // steps[0])
    grown = Geometry(geo.kernel, geo.strides, geo.dilations, geo.begin,
                     (geo.end[0] + max(rows, 0),) + tuple(geo.end[1:]))
    flat = pad(x, grown, value, dtype=dtype).reshape(x.shape[:2] + (-1,))
    return FlatWindows(tuple(flat[:, :, o:o + length] for o in offsets), length,
                       (out[0],) + padded_shape[1:], out)
