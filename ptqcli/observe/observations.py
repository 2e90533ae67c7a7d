"""Observations: one streaming histogram per observed tensor, saved as ``.npz`` so that range
methods can be changed without running the model again."""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from calibrators.histogram import Histogram
from ptqcli import __version__
from ptqcli.errors import ObservationError
from ptqcli.files import write_atomic

FORMAT = "ptq-observations"
#: 2: with each tensor's stride and the tensors counted again.  Version 1 files (strides unknown,
#: and taken with a stride that could alias) still load; their tensors count as subsampled.
VERSION = 2
READABLE = (1, 2)


@dataclass(frozen=True)
class Observations:
    """Histograms by tensor name, for the model with ``fingerprint``, over ``samples`` samples.

    ``subsample``: the most histogram values taken per sample and tensor (0: every value);
    ``strides``: per tensor, the stride of the values counted (1: every value; a tensor not
    listed counts as subsampled); ``recounted``: tensors whose every value was counted in a
    second pass because the subsample missed their extremes (``calibrators.guard``).
    The extremes are always exact."""

    fingerprint: str
    samples: int
    subsample: int
    histograms: dict[str, Histogram]
    strides: dict[str, int] = field(default_factory=dict)
    recounted: frozenset[str] = frozenset()

    def dense(self, tensor: str) -> bool:
        """Whether every value of ``tensor`` was counted in its histogram."""
        return self.strides.get(tensor, 0) == 1


def save(obs: Observations, path: str | os.PathLike) -> None:
    """Write atomically (see ``ptqcli.files``)."""
    path = pathlib.Path(path)
    names = sorted(obs.histograms)
    meta = {"format": FORMAT, "version": VERSION, "tool": __version__, "fingerprint": obs.fingerprint,
            "samples": obs.samples, "subsample": obs.subsample, "tensors": names,
            "strides": [obs.strides.get(n, 0) for n in names], "recounted": sorted(obs.recounted)}
    arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)}
    arrays.update(pack(obs.histograms, names, "t"))
    write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


def pack(hists: dict[str, Histogram], names: list[str], prefix: str) -> dict[str, np.ndarray]:
    """The arrays that store ``hists[name]`` for each of ``names`` (in that order), keyed
    ``{prefix}{i}_counts``, ``_grid`` and ``_extremes``."""
    arrays = {}
    for i, name in enumerate(names):
        h = hists[name]
        arrays[f"{prefix}{i}_counts"] = h.counts
        arrays[f"{prefix}{i}_grid"] = np.array([h.width_exp, h.offset], dtype=np.int64)
        arrays[f"{prefix}{i}_extremes"] = np.array([h.minimum, h.maximum], dtype=np.float64)
    return arrays


def unpack(npz: Mapping[str, np.ndarray], names: list[str], prefix: str) -> dict[str, Histogram]:
    """The histograms ``pack`` stored (``npz``: an open ``.npz`` file, or any mapping)."""
    hists = {}
    for i, name in enumerate(names):
        width_exp, offset = (int(v) for v in npz[f"{prefix}{i}_grid"])
        lo, hi = (float(v) for v in npz[f"{prefix}{i}_extremes"])
        hists[name] = Histogram(width_exp, offset, npz[f"{prefix}{i}_counts"].astype(np.int64), lo, hi)
    return hists


#: Every ``.npz`` file is a zip archive and starts with a zip local file header.
_ZIP_MAGIC = b"PK\x03\x04"


def load(path: str | os.PathLike) -> Observations:
    """Read an observation file written by ``save``; any problem is an ``ObservationError``."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except FileNotFoundError:
        raise ObservationError(f"{path}: no such observation file") from None
    except OSError as exc:
        raise ObservationError(f"{path}: cannot read observations ({exc.strerror})") from None
    if head != _ZIP_MAGIC:
        raise ObservationError(f"{path}: not a ptq observation file (the .obs.npz archive that ptq "
                               f"calibrate writes beside its table)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["meta"]).decode())
            if meta.get("format") != FORMAT or meta.get("version") not in READABLE:
                raise ObservationError(f"{path}: not a ptq observation file (format {VERSION})")
            hists = unpack(npz, meta["tensors"], "t")
    except ObservationError:
        raise
    except Exception as exc:
        raise ObservationError(f"{path}: cannot read observations ({exc})") from None
    strides = {n: int(k) for n, k in zip(meta["tensors"], meta.get("strides", ())) if k}
    return Observations(meta["fingerprint"], int(meta["samples"]), int(meta["subsample"]), hists,
                        strides, frozenset(meta.get("recounted", ())))
