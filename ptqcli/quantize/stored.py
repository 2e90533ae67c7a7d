"""Tensors a calibration decided itself: learned integer codes and equalized float weights.

Nearest rounding needs nothing stored: the codes of a weight are ``quantize(initializer, params)``
of the prepared model, recomputed by whoever needs them.  Three calibration steps make codes or
values that cannot be recomputed from the model and the scales:

- AdaRound learns, per weight, whether to round up or down (``codes`` of the weight);
- bias correction shifts a bias by the layer's mean output error (``codes`` of the bias, int32);
- cross-layer equalization rescales consecutive weights and biases (``values``: the equalized
  float initializers; they replace the model's, which leaves the float model's outputs unchanged
  but moves every intermediate tensor the table quantizes).

They live in a *sidecar* ``.npz`` beside the table, which names it and holds the SHA-256 of its
contents; a sidecar that does not match is refused.  Why a sidecar rather than the JSON table: a
real model has millions of weights (PP-OCRv4 rec: 2.7 M); as JSON they would turn a readable
table of scales into tens of megabytes of numbers, and int8 codes take one byte each in ``.npy``.

:func:`codes` is the one source of a weight's, bias's or constant's integer codes: the QDQ export,
the simulator, the sensitivity analysis and the rounding driver all call it, so what the table
says is what every consumer uses.  :func:`overlay` gives the prepared model with the equalized
values in place: the float model the table's activation ranges were observed on.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import zipfile
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import onnx
from onnx import numpy_helper

from ptqcli.errors import TableError
from ptqcli.files import write_atomic
from ptqcli.quantize.qparams import LIMITS, NUMPY, quantize, quantize_bias

#: Sidecar file name: the table's name without ``.json``, plus this suffix.
SUFFIX = ".weights.npz"
_KINDS = ("codes", "values")
#: Fixed timestamp of every zip entry, so the same arrays give the same bytes (ZIP's epoch).
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True, eq=False)
class Stored:
    """Integer ``codes`` (tensor -> array of the table dtype, the initializer's shape) and float
    ``values`` (tensor -> float32 array replacing the initializer)."""

    codes: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.codes or self.values)

    def digest(self) -> str:
        """SHA-256 of the contents (names, dtypes, shapes, little-endian bytes), not of the file."""
        h = hashlib.sha256()
        for kind in _KINDS:
            arrays = getattr(self, kind)
            for name in sorted(arrays):
                a = np.ascontiguousarray(arrays[name])
                a = a.astype(a.dtype.newbyteorder("<"), copy=False)
                h.update(f"{kind}\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
                h.update(a.tobytes())
        return "sha256:" + h.hexdigest()

    def merged(self, *, codes: dict[str, np.ndarray] | None = None,
               values: dict[str, np.ndarray] | None = None) -> Stored:
        return Stored({**self.codes, **(codes or {})}, {**self.values, **(values or {})})


def codes(table, name: str, value: np.ndarray | None) -> np.ndarray:
    """The integer codes of initializer ``name`` under ``table``: the stored ones if the table
    has them, else ``value`` (the initializer, or its equalized replacement) rounded to nearest
    with the table's parameters (int32 ``round(b / (s_x s_w))`` for a bias)."""
    entry = table.tensors.get(name)
    if entry is None:
        raise TableError(f"the scale table has no parameters for tensor {name!r}")
    stored = getattr(table, "stored", None)
    if stored is not None and name in stored.codes:
        q = stored.codes[name]
        if value is not None and q.shape != np.shape(value):
            raise TableError(f"stored codes of {name!r} have shape {q.shape}, the model's tensor {np.shape(value)}")
        return q
    if value is None:
        raise TableError(f"tensor {name!r} has neither a value in the model nor stored codes")
    return quantize_bias(value, entry.params) if entry.role == "bias" else quantize(value, entry.params)


def value(table, index, name: str) -> np.ndarray:
    """Initializer ``name`` as the table sees it: its equalized value if stored, else the model's."""
    stored = getattr(table, "stored", None)
    if stored is not None and name in stored.values:
        return stored.values[name]
    return index.array(name)


def overlay(prepared, table):
    """``prepared`` with the table's stored float values in place of its initializers (the same
    object when there are none).  The fingerprint stays the user's model's: the table names that
    model, and the sidecar's digest names the values."""
    stored = getattr(table, "stored", None)
    if stored is None or not stored.values:
        return prepared
    return with_values(prepared, stored.values)


def with_values(prepared, values: dict[str, np.ndarray], fingerprint: str | None = None):
    """A copy of ``prepared`` whose initializers named in ``values`` hold those values, with
    ``fingerprint`` (default: the original's)."""
    from dataclasses import replace

    from ptqcli.graph import GraphIndex

    model = onnx.ModelProto()
    model.CopyFrom(prepared.model)
    for init in model.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(np.asarray(values[init.name], dtype=np.float32), init.name))
    return replace(prepared, model=model, index=GraphIndex(model), fingerprint=fingerprint or prepared.fingerprint)


def sidecar_path(table_path: pathlib.Path) -> pathlib.Path:
    return table_path.with_name(table_path.name.removesuffix(".json") + SUFFIX)


def save(stored: Stored, path: str | os.PathLike) -> None:
    """Write ``stored`` to ``path`` whole or not at all (``ptqcli.files.write_atomic``)."""
    write_atomic(path, lambda f: write_npz(stored, f))


def write_npz(stored: Stored, f: BinaryIO) -> None:
    """``stored`` as an uncompressed ``.npz`` whose bytes depend on its contents only (sorted
    entries, fixed timestamps), written to the open binary file ``f``."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for kind in _KINDS:
            arrays = getattr(stored, kind)
            names = sorted(arrays)
            _entry(zf, f"{kind}.names", np.array(names, dtype=str) if names else np.zeros(0, dtype="<U1"))
            for i, name in enumerate(names):
                _entry(zf, f"{kind}.{i:05d}", np.ascontiguousarray(arrays[name]))


def _entry(zf: zipfile.ZipFile, key: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    info = zipfile.ZipInfo(key + ".npy", date_time=_EPOCH)
    info.external_attr = 0o644 << 16
    zf.writestr(info, buf.getvalue())


def load(path: pathlib.Path, digest: str, table_path: pathlib.Path, dtypes: dict[str, str]) -> Stored:
    """Read the sidecar at ``path``; refuse it unless its contents hash to ``digest`` and every
    code lies within its tensor's dtype (``dtypes``: tensor -> table dtype)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            found = {}
            for kind in _KINDS:
                names = [str(n) for n in npz[f"{kind}.names"]]
                found[kind] = {n: npz[f"{kind}.{i:05d}"] for i, n in enumerate(names)}
    except FileNotFoundError:
        raise TableError(f"{table_path}: its weights file {str(path)!r} is missing") from None
    except Exception as exc:
        raise TableError(f"{table_path}: cannot read its weights file {str(path)!r} ({exc})") from None
    stored = Stored(found["codes"], found["values"])
    if stored.digest() != digest:
        raise TableError(f"{table_path}: weights file {str(path)!r} does not match the table "
                         f"(contents {stored.digest()[:19]}..., the table names {digest[:19]}...)")
    for name, q in stored.codes.items():
        dtype = dtypes.get(name)
        if dtype is None:
            raise TableError(f"{table_path}: stored codes for {name!r}, which the table does not quantize")
        lo, hi = LIMITS[dtype]
        if q.dtype != NUMPY[dtype] or (q.size and (q.min() < lo or q.max() > hi)):
            raise TableError(f"{table_path}: stored codes of {name!r} are not {dtype} codes")
    for name, v in stored.values.items():
        if v.dtype != np.float32 or not np.all(np.isfinite(v)):
            raise TableError(f"{table_path}: stored value of {name!r} is not finite float32")
    return stored

