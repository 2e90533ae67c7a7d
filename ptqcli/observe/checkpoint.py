"""Checkpoints of the observation pass: its state (``state.PassState``) saved atomically every
so many samples, so that an interrupted pass continues where it stopped (``--resume``).

A checkpoint records what it was made from, in three parts, and is refused unless all three
match the run that would continue it: the *model* (the prepared model's fingerprint), the
*data* (every sample file's name, size and modification time, in order) and the *options* that
decide which values are counted (the observed tensors, subsample, batch size, image
preprocessing, the memory budget, the tool version).  The state holds histograms, stream
positions and counts, never samples, so a checkpoint is as small as the observation file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ptqcli import __version__
from ptqcli.errors import ObservationError
from ptqcli.files import write_atomic
from ptqcli.observe.state import PassState
from ptqcli.observe.observations import pack, unpack

FORMAT = "ptq-checkpoint"
VERSION = 1


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Key:
    """What a checkpoint was made from: digests of the model, the data and the options."""

    model: str
    data: str
    options: str

    @staticmethod
    def of(fingerprint: str, files: Sequence[pathlib.Path], options: dict[str, Any]) -> "Key":
        """``options``: JSON values that decide the values counted."""
        stats = []
        for f in files:
            st = os.stat(f)
            stats.append([f.name, st.st_size, st.st_mtime_ns])
        return Key(fingerprint, _digest(stats), _digest({**options, "tool": __version__}))


def save(state: PassState, key: Key, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` whole or not at all (the previous checkpoint stays until the
    new one has replaced it)."""
    names = sorted(state.histograms)
    fresh = sorted(state.fresh)
    meta = {"format": FORMAT, "version": VERSION, "key": [key.model, key.data, key.options],
            "files": state.files, "samples": state.samples, "chunk": state.chunk, "tensors": names,
            "strides": [state.strides[n] for n in names], "seen": sorted(state.seen.items()),
            "recount": [list(r) for r in state.recount], "fresh": fresh}
    arrays = {"meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)}
    arrays.update(pack(state.histograms, names, "t"))
    arrays.update(pack(state.fresh, fresh, "f"))
    write_atomic(path, lambda f: np.savez(f, **arrays))


def load(path: str | os.PathLike, key: Key) -> PassState:
    """The state saved at ``path``, if it was made from ``key``; else an ``ObservationError``
    naming the file and what differs."""
    path = pathlib.Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["meta"]).decode())
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                raise ObservationError(f"{path}: not a ptq checkpoint (format {VERSION})")
            hists = unpack(npz, meta["tensors"], "t")
            fresh = unpack(npz, meta["fresh"], "f")
    except ObservationError:
        raise
    except Exception as exc:
        raise ObservationError(f"{path}: cannot read the checkpoint ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    saved = Key(*meta["key"])
    differs = [what for what, a, b in (("model", saved.model, key.model), ("data", saved.data, key.data),
                                       ("options", saved.options, key.options)) if a != b]
    if differs:
        raise ObservationError(f"{path}: the checkpoint was made with another {' and '.join(differs)}; "
                               f"run without --resume to start again")
    return PassState(int(meta["files"]), int(meta["samples"]), dict(zip(meta["tensors"], meta["strides"])),
                     {t: int(n) for t, n in meta["seen"]}, int(meta["chunk"]), hists,
                     tuple((t, int(r)) for t, r in meta["recount"]), fresh)
