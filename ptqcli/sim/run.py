"""Run a :class:`~ptqcli.sim.program.Program` on one batch of model inputs.

Every quantized activation is held as integer codes from the moment it is produced (or fed):
a float result that the table quantizes is quantized at once, as the exported model's
QuantizeLinear does, so every consumer sees the same codes.  Other tensors are plain arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from ptqcli.errors import DataError
from ptqcli.quantize.qparams import QuantParams, dequantize, quantize
from ptqcli.sim.base import Log, Overflow
from ptqcli.sim.pairs import Saturation
from ptqcli.sim.program import CODES, Fallback, Program


@dataclass(frozen=True)
class SimTensor:
    """One tensor of a run: ``values`` (float32, dequantized for a quantized tensor) and, when
    the table quantizes it, its integer ``codes`` and their ``params``."""

    values: np.ndarray
    codes: np.ndarray | None = None
    params: QuantParams | None = None


@dataclass(frozen=True)
class SimOutputs:
    """What a run returns: the tensors asked for (graph outputs by default), the int32
    overflows seen, the nodes the program computes in float, and (``cpu="x86-avx2"``) the
    int16 pair sums that saturated."""

    tensors: dict[str, SimTensor]
    overflows: tuple[Overflow, ...]
    fallbacks: tuple[Fallback, ...]
    saturations: tuple[Saturation, ...] = ()


class _Store:
    """The tensors of one run (created per run, never shared)."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.codes: dict[str, np.ndarray] = {}
        self.values: dict[str, np.ndarray] = {}

    def put_value(self, name: str, value: np.ndarray) -> None:
        value = np.asarray(value)
        p = self.program.params.get(name)
        if p is not None and value.dtype.kind == "f":
            self.codes[name] = quantize(value, p)
        else:
            self.values[name] = value

    def put_codes(self, name: str, codes: np.ndarray, params: QuantParams) -> None:
        if name in self.program.params:
            self.codes[name] = codes
        else:  # codes nobody quantizes further: consumers read their real values
            self.values[name] = dequantize(codes, params)

    def read(self, name: str, mode: str) -> np.ndarray | None:
        if not name:
            return None
        if mode == CODES:
            if name in self.codes:
                return self.codes[name]
            return self.program.const_codes[name]
        if name in self.values:
            return self.values[name]
        if name in self.codes:
            return dequantize(self.codes[name], self.program.params[name])
        return self.program.constants[name]

    def drop(self, names: Iterable[str]) -> None:
        for name in names:
            self.codes.pop(name, None)
            self.values.pop(name, None)

    def result(self, name: str) -> SimTensor:
        if name in self.codes:
            p = self.program.params[name]
            return SimTensor(dequantize(self.codes[name], p), self.codes[name], p)
        return SimTensor(self.values[name])


def run(program: Program, feeds: Mapping[str, np.ndarray], *, keep: Iterable[str] | None = None) -> SimOutputs:
    """Simulate one batch.  ``feeds``: input name -> array; ``keep``: tensors to return besides
    the graph outputs (default: all those named when the program was built, which must include
    them)."""
    store = _Store(program)
    for spec in program.inputs:
        if spec.name not in feeds:
            raise DataError(f"no value for model input {spec.name!r}")
        store.put_value(spec.name, feeds[spec.name])
    first = np.asarray(feeds[program.inputs[0].name]) if program.inputs else None
    log = Log(batch=len(first) if first is not None and first.ndim else None)
    for step in program.steps:
        args = [store.read(name, mode) for name, mode in step.reads]
        outs = step.kernel.run(args, log)
        for name, out, p in zip(step.writes, outs, step.params):
            if p is None:
                store.put_value(name, out)
            else:
                store.put_codes(name, out, p)
        store.drop(step.release)
    keep = program.keep if keep is None else tuple(keep)
    wanted = tuple(dict.fromkeys(tuple(program.outputs) + keep))
    return SimOutputs({name: store.result(name) for name in wanted}, tuple(log.overflows), program.fallbacks,
                      tuple(log.saturations))
