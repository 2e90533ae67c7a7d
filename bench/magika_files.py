"""Real files of this machine, labelled, and turned into Magika's byte features.

Features follow magika 1.0.3 (``Magika._extract_features_from_seekable`` with the standard_v3_3
config): read at most ``block_size`` (4096) bytes from the start and from the end, ``lstrip`` the
first and ``rstrip`` the second (bytes.strip: ASCII whitespace), keep the first ``beg_size`` and
the last ``end_size`` (1024 each) and pad with ``padding_token`` (256) after the beginning and
before the end.  Files under ``min_file_size_for_dl`` (8) bytes, or whose 8th stripped byte is
padding, never reach the model in magika and are skipped here.

Labels come from the file extension (only extensions that name exactly one label of the model's
``target_labels_space`` in magika's content-type knowledge base) or, for files without a known
extension, from magic bytes and ``#!`` lines.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pathlib
from dataclasses import dataclass

import numpy as np

from bench.common import MODELS, read_json

ROOTS = ("/usr/share", "/usr/lib/python3*", "/usr/include", "/etc", "/usr/bin", "/usr/sbin",
         "/usr/lib/x86_64-linux-gnu", "/work/venv/lib")

MAGIC = (  # (prefix, label) checked in order on the raw first bytes
    (b"\x7fELF", "elf"), (b"\x1f\x8b", "gzip"), (b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpeg"),
    (b"GIF8", "gif"), (b"BZh", "bzip"), (b"\xfd7zXZ", "xz"), (b"%PDF", "pdf"), (b"PK\x03\x04", "zip"),
    (b"!<arch>", "ar"),
)
SHEBANG = (("python", "python"), ("perl", "perl"), ("bash", "shell"), ("/sh", "shell"), ("dash", "shell"),
           ("ruby", "ruby"), ("node", "javascript"), ("awk", "awk"), ("tcl", "tcl"), ("lua", "lua"))


@dataclass(frozen=True)
class MagikaConfig:
    """What feature extraction and labelling need from the package's config."""

    beg_size: int
    end_size: int
    block_size: int
    padding_token: int
    min_size: int
    labels: tuple[str, ...]


def load_config() -> MagikaConfig:
    """The standard_v3_3 config as the package ships it (bench/cache/models/magika_config.json)."""
    c = read_json(MODELS / "magika_config.json")
    return MagikaConfig(c["beg_size"], c["end_size"], c["block_size"], c["padding_token"],
                        c["min_file_size_for_dl"], tuple(c["target_labels_space"]))


def extension_map(labels: tuple[str, ...]) -> dict[str, str]:
    """Extension (lower case, no dot) -> label, for extensions naming exactly one model label."""
    kb = read_json(MODELS / "magika_content_types_kb.json")
    owners: dict[str, set[str]] = {}
    for label, info in kb.items():
        if label in labels:
            for ext in info.get("extensions") or []:
                owners.setdefault(ext.lower(), set()).add(label)
    return {ext: next(iter(o)) for ext, o in sorted(owners.items()) if len(o) == 1}


def features(path: pathlib.Path, cfg: MagikaConfig) -> np.ndarray | None:
    """The model's int32 input row (beg_size + end_size,) for one file, or None if magika would not
    run the model on it."""
    size = path.stat().st_size
    if size < cfg.min_size:
        return None
    n = min(cfg.block_size, size)
    with open(path, "rb") as f:
        beg = f.read(n).lstrip()[: cfg.beg_size]
        f.seek(size - n)
        end = f.read(n).rstrip()
    end = end[len(end) - cfg.end_size:] if len(end) > cfg.end_size else end
    row = np.full(cfg.beg_size + cfg.end_size, cfg.padding_token, dtype=np.int32)
    row[: len(beg)] = np.frombuffer(beg, dtype=np.uint8)
    if end:
        row[cfg.beg_size + cfg.end_size - len(end):] = np.frombuffer(end, dtype=np.uint8)
    if row[cfg.min_size - 1] == cfg.padding_token:
        return None
    return row


def label_of(path: pathlib.Path, ext_map: dict[str, str], labels: tuple[str, ...]) -> str | None:
    """The label of a file from its extension, else its magic bytes or #! line; None if unknown."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ext_map:
        return ext_map[suffix]
    if suffix:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(128)
    except OSError:
        return None
    for prefix, label in MAGIC:
        if head.startswith(prefix):
            return label if label in labels else None
    if head.startswith(b"#!"):
        first = head.split(b"\n", 1)[0].decode("latin-1")
        for word, label in SHEBANG:
            if word in first:
                return label if label in labels else None
    return None


def candidates(ext_map: dict[str, str], labels: tuple[str, ...]) -> dict[str, list[pathlib.Path]]:
    """Regular, readable, non-symlink files under ROOTS, grouped by label, each list sorted."""
    found: dict[str, set[pathlib.Path]] = {}
    roots = sorted({r for pattern in ROOTS for r in glob.glob(pattern)})
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = pathlib.Path(dirpath, name)
                if path.is_symlink() or not path.is_file() or not os.access(path, os.R_OK):
                    continue
                label = label_of(path, ext_map, labels)
                if label is not None:
                    found.setdefault(label, set()).add(path)
    return {label: sorted(paths) for label, paths in sorted(found.items())}


def pick(paths: list[pathlib.Path], cfg: MagikaConfig, rng: np.random.Generator, cap: int,
         seen: set[str]) -> list[tuple[pathlib.Path, np.ndarray]]:
    """Up to ``cap`` files of one label in a seeded random order, with distinct features."""
    chosen = []
    for i in rng.permutation(len(paths)):
        try:
            row = features(paths[int(i)], cfg)
        except OSError:
            continue
        if row is None:
            continue
        digest = hashlib.sha256(row.tobytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        chosen.append((paths[int(i)], row))
        if len(chosen) == cap:
            break
    return chosen
