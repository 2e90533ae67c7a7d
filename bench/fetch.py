"""Fetch the benchmark's models from their PyPI wheels (never from a model hub).

``pip download --no-deps`` puts the wheels in bench/cache/wheels/; the ONNX models and the
configuration the pre- and post-processing need are unzipped into bench/cache/models/:

- rapidocr-onnxruntime 1.4.4: PP-OCRv4 det and rec, PP-OCR mobile v2.0 cls, and ``config.yaml``;
  the rec character dictionary is the model's ``character`` metadata, written to ``rec_dict.txt``.
- magika 1.0.3: the ``standard_v3_3`` model, its ``config.min.json`` and ``content_types_kb.min.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import subprocess
import sys
import zipfile

import onnx

from bench.common import CACHE, MODELS

WHEELS = CACHE / "wheels"
PACKAGES = ("rapidocr-onnxruntime==1.4.4", "magika==1.0.3")

# (wheel name prefix, member inside the wheel, file under bench/cache/models/)
MEMBERS = (
    ("rapidocr_onnxruntime-1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_det_infer.onnx"),
    ("rapidocr_onnxruntime-1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx"),
    ("rapidocr_onnxruntime-1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    ("rapidocr_onnxruntime-1.4.4", "rapidocr_onnxruntime/config.yaml", "rapidocr_config.yaml"),
    ("magika-1.0.3", "magika/models/standard_v3_3/model.onnx", "magika_standard_v3_3.onnx"),
    ("magika-1.0.3", "magika/models/standard_v3_3/config.min.json", "magika_config.json"),
    ("magika-1.0.3", "magika/config/content_types_kb.min.json", "magika_content_types_kb.json"),
)


def download_wheels() -> dict[str, pathlib.Path]:
    """Download the wheels (once) and return them by name prefix."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    wheels = {p.name.split("-py")[0]: p for p in WHEELS.glob("*.whl")}
    if not all(prefix in wheels for prefix, _, _ in MEMBERS):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(WHEELS), *PACKAGES],
                       check=True)
        wheels = {p.name.split("-py")[0]: p for p in WHEELS.glob("*.whl")}
    return wheels


def extract(wheels: dict[str, pathlib.Path]) -> None:
    """Unzip the members the benchmark uses into bench/cache/models/."""
    MODELS.mkdir(parents=True, exist_ok=True)
    for prefix, member, target in MEMBERS:
        with zipfile.ZipFile(wheels[prefix]) as zf:
            (MODELS / target).write_bytes(zf.read(member))


def write_rec_dict() -> None:
    """Write the rec model's character list (its ``character`` metadata), one entry per line."""
    model = onnx.load(str(MODELS / "ch_PP-OCRv4_rec_infer.onnx"), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    (MODELS / "rec_dict.txt").write_text(meta["character"], encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Fetch and unpack, then print each model's size and SHA-256."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    extract(download_wheels())
    write_rec_dict()
    for path in sorted(MODELS.glob("*.onnx")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"{path.relative_to(CACHE.parent.parent)}  {path.stat().st_size:>10} bytes  sha256 {digest}...")


if __name__ == "__main__":
    main()
