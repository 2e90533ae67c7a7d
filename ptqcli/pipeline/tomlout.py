"""A small, deterministic TOML writer for the configuration ``ptq run --print-config`` shows.

It writes what the configuration holds and nothing more (TOML v1.0.0, https://toml.io/en/v1.0.0):
strings, booleans, integers, floats, arrays of those, inline tables, tables.  Keys keep the
order they are given in; ``None`` is written as a comment, since TOML has no null; floats as
Python's shortest round-trip ``repr`` (``inf`` and ``nan`` are TOML's spellings too).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def key(name: str) -> str:
    return name if _BARE.match(name) else string(name)


def value(v: Any) -> str:
    """One TOML value (no tables of tables: those are sections)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        text = repr(v)
        return text if any(c in text for c in ".eni") else text + ".0"  # 'inf', '1e-05', '2.0'
    if isinstance(v, str):
        return string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}" if v else "{}"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def dumps(document: Mapping[str, Any], *, sections: frozenset[str] = frozenset(), header: str = "") -> str:
    """``document`` as TOML.  A mapping whose dotted key is in ``sections`` is a ``[table]``;
    any other mapping is an inline table.  ``header``: comment lines written first."""
    lines = [f"# {ln}".rstrip() for ln in header.splitlines()]

    def table(doc: Mapping[str, Any], path: str) -> None:
        subs = []
        for k, v in doc.items():
            dotted = f"{path}.{k}" if path else k
            if isinstance(v, Mapping) and dotted in sections:
                subs.append((dotted, v))
            elif v is None:
                lines.append(f"# {key(k)}: not set")
            else:
                lines.append(f"{key(k)} = {value(v)}")
        for dotted, v in subs:
            lines.append("")
            lines.append("[" + ".".join(key(p) for p in dotted.split(".")) + "]")
            table(v, dotted)

    table(document, "")
    return "\n".join(lines).lstrip("\n") + "\n"
