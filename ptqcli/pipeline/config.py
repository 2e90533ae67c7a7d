"""The ``ptq run`` configuration: one TOML file for what the CLI flags hold, plus a gate.

The keys are not listed here a second time: each section is a frozen dataclass, and the keys,
their types and their defaults are read from its fields.  ``[calibrate]`` holds the calibration
folder, ``on_bad_sample`` and every field of ``CalibrationOptions``; ``[data]`` is
``api.DataOptions`` with ``[data.image]`` its ``ImageSpec``.  A field whose type is a tuple of
``(name, value...)`` tuples (``method_for``, ``fixed_ranges``) is a TOML table ``name = value``,
the form a scale table records its options in.  ``None`` defaults are keys left out.

Relative paths resolve against the folder of the configuration file.  Every problem is a
``ConfigError`` (exit code 2) naming the key by its dotted path (``calibrate.percentile``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ptqcli.choices import ON_BAD_SAMPLE, REQUANT, SIM_CPUS
from ptqcli.errors import ConfigError, OptionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, before it joined the standard library
    import tomli as tomllib

if typing.TYPE_CHECKING:
    from ptqcli.api import DataOptions
    from ptqcli.quantize.decide import CalibrationOptions


def _lazy(name: str) -> Callable[[], Any]:
    """A default built on first use, so that importing this module stays light."""
    def make() -> Any:
        from ptqcli import api

        return getattr(api, name)()
    return make


@dataclass(frozen=True)
class CalibrateSection:
    """``[calibrate]``: the folder of calibration samples, what to do with one that fails its
    checks, and the range options (the fields of ``CalibrationOptions``, in this same table)."""

    data: pathlib.Path
    on_bad_sample: str = field(default="fail", metadata={"choices": ON_BAD_SAMPLE})
    options: CalibrationOptions = field(default_factory=_lazy("CalibrationOptions"), metadata={"flatten": True})


@dataclass(frozen=True)
class EvaluateSection:
    """``[evaluate]``: the folder the quantized model is compared with float on; ``labels`` (CSV
    rows ``file,label``) give top-1 accuracy; ``reference``: ONNX Runtime's reference arithmetic
    instead of this CPU's fused int8 kernels."""

    data: pathlib.Path
    labels: pathlib.Path | None = None
    reference: bool = False


@dataclass(frozen=True)
class SimulateSection:
    """``[simulate]``: also run the integer simulator on the evaluation folder (as ``ptq
    simulate``); its figures go to the summary, the gate reads ``evaluate``'s."""

    enabled: bool = False
    requant: str = field(default="fixed", metadata={"choices": REQUANT})
    cpu: str = field(default="exact", metadata={"choices": SIM_CPUS})
    per_layer: bool = False


@dataclass(frozen=True)
class GateSection:
    """``[gate]``: ``max_drop``: the largest top-1 accuracy drop allowed, float minus quantized,
    as a fraction (0.01 is one percentage point; needs ``evaluate.labels``); ``min_sqnr``: the
    lowest SQNR of the model output in dB, of ``output`` or else of the worst output."""

    max_drop: float | None = None
    min_sqnr: float | None = None
    output: str | None = None


@dataclass(frozen=True)
class OutputsSection:
    """``[outputs]``: where the files go; each defaults to a name in ``dir``."""

    dir: pathlib.Path = pathlib.Path("ptq-out")
    table: pathlib.Path | None = None
    model: pathlib.Path | None = None
    summary: pathlib.Path | None = None
    junit: pathlib.Path | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything ``ptq run`` does, resolved: absolute paths, every output named."""

    model: pathlib.Path
    calibrate: CalibrateSection
    evaluate: EvaluateSection
    data: DataOptions = field(default_factory=_lazy("DataOptions"))
    simulate: SimulateSection = field(default_factory=SimulateSection)
    gate: GateSection = field(default_factory=GateSection)
    outputs: OutputsSection = field(default_factory=OutputsSection)


# --- reading -------------------------------------------------------------------------------------

_TOML_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a float", list: "an array",
               dict: "a table"}


def _toml_type(value: Any) -> str:
    return next((name for t, name in _TOML_TYPES.items() if type(value) is t), f"a {type(value).__name__}")


def _hints(cls: type) -> dict[str, Any]:
    from ptqcli import api  # the sections' annotations name these; importing them early is slow

    return typing.get_type_hints(cls, localns={"DataOptions": api.DataOptions,
                                               "CalibrationOptions": api.CalibrationOptions})


def _optional(hint: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _named(hint: Any) -> Any | None:
    """For ``tuple[tuple[str, V...], ...]`` (written as a TOML table ``name = value``), the
    value type: ``V`` for one value, ``tuple[V1, V2]`` for more; else None."""
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[1:] == (...,):
        item = typing.get_args(hint)[0]
        args = typing.get_args(item)
        if typing.get_origin(item) is tuple and len(args) >= 2 and args[0] is str and ... not in args:
            return args[1] if len(args) == 2 else tuple[args[1:]]  # type: ignore[misc]
    return None


def _describe(hint: Any) -> str:
    hint = _optional(hint)
    if dataclasses.is_dataclass(hint):
        return "a table"
    if hint is pathlib.Path:
        return "a path (a string)"
    if hint in (str, bool, int, float):
        return {str: "a string", bool: "true or false", int: "an integer", float: "a number"}[hint]
    value = _named(hint)
    if value is not None:
        return f"a table of names to {_describe(value).removeprefix('a ').removeprefix('an ')}s"
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args[1:] == (...,):
        return f"an array of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if typing.get_origin(hint) is tuple:
        return f"an array of {len(args)} {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return str(hint)


def _convert(value: Any, hint: Any, key: str, base: pathlib.Path) -> Any:
    """``value`` read from TOML as the field type ``hint`` wants it; ConfigError naming ``key``."""
    hint = _optional(hint)

    def wrong() -> ConfigError:
        return ConfigError(f"{key} must be {_describe(hint)}, got {_toml_type(value)} {value!r}")

    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise wrong()
        return _section(hint, value, key + ".", base)
    if hint is pathlib.Path:
        if not isinstance(value, str) or not value:
            raise wrong()
        return pathlib.Path(os.path.abspath(base / os.path.expanduser(value)))
    if hint is bool or hint is str:
        if type(value) is not hint:
            raise wrong()
        return value
    if hint is int:
        if type(value) is not int:
            raise wrong()
        return value
    if hint is float:
        if type(value) not in (int, float):
            raise wrong()
        return float(value)
    named = _named(hint)
    if named is not None:
        if not isinstance(value, dict):
            raise wrong()
        items = []
        for name, v in value.items():
            v = _convert(v, named, f"{key}.{name}", base)
            items.append((name, *v) if isinstance(v, tuple) else (name, v))
        return tuple(items)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list) or (args[1:] != (...,) and len(value) != len(args)):
            raise wrong()
        kinds = [args[0]] * len(value) if args[1:] == (...,) else list(args)
        return tuple(_convert(v, k, f"{key}[{i}]", base) for i, (v, k) in enumerate(zip(value, kinds)))
    raise TypeError(f"{key}: no TOML form for {hint!r}")  # a new option type: teach _convert


def keys(cls: type) -> list[str]:
    """The keys of the TOML table for the section ``cls``, in field order (flattened fields'
    keys in their place)."""
    out: list[str] = []
    for f in dataclasses.fields(cls):
        out += keys(_hints(cls)[f.name]) if f.metadata.get("flatten") else [f.name]
    return out


def _section(cls: type, table: Mapping[str, Any], prefix: str, base: pathlib.Path) -> Any:
    known = keys(cls)
    unknown = [k for k in table if k not in known]
    if unknown:
        where = f"in [{prefix.rstrip('.')}]" if prefix else "at the top level"
        raise ConfigError(f"unknown key {prefix + unknown[0]!r}; valid keys {where}: {', '.join(known)}")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if f.metadata.get("flatten"):
            values[f.name] = _section(hint, {k: v for k, v in table.items() if k in keys(hint)}, prefix, base)
            continue
        key = prefix + f.name
        if f.name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if dataclasses.is_dataclass(_optional(hint)):
                    raise ConfigError(f"missing table [{key}]")
                raise ConfigError(f"missing key {key!r}")
            continue
        values[f.name] = _convert(table[f.name], hint, key, base)
        choices = f.metadata.get("choices")
        if choices is not None and values[f.name] not in choices:
            raise ConfigError(f"{key} {values[f.name]!r}: known: {', '.join(choices)}")
    try:
        made = cls(**values)
        if hasattr(made, "validate"):
            made.validate()
    except OptionError as exc:  # the section's own checks name its fields by their keywords
        raise ConfigError(exc.spelled(lambda name: prefix + name)) from None
    return made


def _resolve(config: RunConfig, base: pathlib.Path) -> RunConfig:
    """Fill in the outputs (in ``outputs.dir``, itself relative to ``base``), and check what no
    single section can."""
    gate, out = config.gate, config.outputs
    if gate.max_drop is None and gate.min_sqnr is None:
        raise ConfigError("[gate] sets neither max_drop nor min_sqnr: give at least one (a run without a gate "
                          "would always pass)")
    if gate.max_drop is not None and not 0.0 <= gate.max_drop <= 1.0:
        raise ConfigError(f"gate.max_drop must be a fraction in [0, 1] (0.01 is one point of accuracy), "
                          f"got {gate.max_drop!r}")
    if gate.max_drop is not None and config.evaluate.labels is None:
        raise ConfigError("gate.max_drop compares top-1 accuracy: give evaluate.labels (a CSV of file,label rows)")
    if gate.min_sqnr is not None and not math.isfinite(gate.min_sqnr):
        raise ConfigError(f"gate.min_sqnr must be a finite number of dB, got {gate.min_sqnr!r}")
    if gate.output is not None and gate.min_sqnr is None:
        raise ConfigError("gate.output names the output min_sqnr reads: give gate.min_sqnr too")
    stem = config.model.stem
    out = dataclasses.replace(out, dir=pathlib.Path(os.path.abspath(base / out.dir)))
    out = dataclasses.replace(
        out, table=out.table or out.dir / f"{stem}.table.json", model=out.model or out.dir / f"{stem}.int8.onnx",
        summary=out.summary or out.dir / "summary.json", junit=out.junit or out.dir / "junit.xml")
    named = {f"outputs.{n}": getattr(out, n) for n in ("table", "model", "summary", "junit")}
    from ptqcli.api import observations_path_for

    named["the observations beside outputs.table"] = observations_path_for(out.table)
    seen: dict[pathlib.Path, str] = {}
    for name, path in named.items():
        if path in seen:
            raise ConfigError(f"{seen[path]} and {name} are the same file {str(path)!r}")
        seen[path] = name
    return dataclasses.replace(config, outputs=out)


def loads(text: str, base: pathlib.Path) -> RunConfig:
    """The configuration in the TOML ``text``, relative paths taken from the folder ``base``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML ({exc})") from None
    base = pathlib.Path(os.path.abspath(base))
    return _resolve(_section(RunConfig, document, "", base), base)


def load(path: str | os.PathLike) -> RunConfig:
    """Read the configuration file ``path``; any problem is a ConfigError naming the file."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({getattr(exc, 'strerror', None) or exc})") \
            from None
    try:
        return loads(text, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def key_for(name: str, section: str) -> str:
    """The dotted key of the option the library calls ``name``, preferring ``section``'s."""
    found = [k for k in all_keys() if k.rsplit(".", 1)[-1] == name]
    return next((k for k in found if k.startswith(section + ".")), found[0] if found else name)


def all_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every leaf key of the configuration, dotted (``data.image.mean``)."""
    out: list[str] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        hint = _optional(hints[f.name])
        if f.metadata.get("flatten"):
            out += all_keys(hint, prefix)
        elif dataclasses.is_dataclass(hint):
            out += all_keys(hint, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


# --- writing -------------------------------------------------------------------------------------

def _plain(value: Any, hint: Any) -> Any:
    """The TOML form of a field's ``value`` (the inverse of ``_convert``)."""
    hint = _optional(hint)
    if value is None:
        return None
    if dataclasses.is_dataclass(hint):
        return document(value)
    if isinstance(value, pathlib.Path):
        return str(value)
    if _named(hint) is not None:
        return {name: rest[0] if len(rest) == 1 else list(rest) for name, *rest in value}
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        kinds = [args[0]] * len(value) if args[1:] == (...,) else list(args)
        return [_plain(v, k) for v, k in zip(value, kinds)]
    return value


def document(section: Any) -> dict[str, Any]:
    """A section (or the whole ``RunConfig``) as the TOML document that reads back as it."""
    hints = _hints(type(section))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.metadata.get("flatten"):
            out.update(document(value))
        else:
            out[f.name] = _plain(value, hints[f.name])
    return out


def _sections(cls: type = RunConfig, prefix: str = "") -> frozenset[str]:
    hints = _hints(cls)
    found: set[str] = set()
    for f in dataclasses.fields(cls):
        hint = _optional(hints[f.name])
        if dataclasses.is_dataclass(hint):
            inner = prefix if f.metadata.get("flatten") else f"{prefix}{f.name}."
            found |= _sections(hint, inner) | ({prefix + f.name} if not f.metadata.get("flatten") else set())
    return frozenset(found)


def dumps(config: RunConfig, source: str | os.PathLike | None = None) -> str:
    """``config`` as TOML, every key written (a key left unset as a comment): ``ptq run
    --print-config``.  It reads back as the same configuration."""
    from ptqcli.pipeline import tomlout

    header = "ptq run configuration" + (f" {source}" if source is not None else "") + \
        ", resolved: paths absolute, defaults filled in"
    return tomlout.dumps(document(config), sections=_sections(), header=header)
