"""Calibration and evaluation folders: files in sorted order, checked against the model, batched.

One sample per file:

- ``.npy``: the array for a single-input model;
- ``.npz``: input name -> array, for any model;
- ``.pb``: a serialized ONNX ``TensorProto`` (as in ONNX test data), single-input models;
- ``.png`` / ``.jpg`` / ``.jpeg``: an image, turned into a tensor by an ``ImageSpec``.

An array has the model input's rank (its leading dimension counts samples) or one less (a batch
axis of 1 is added).  Static dimensions must match, integer and float data must match the input's
kind (values are cast within a kind), and float data must be finite.  Other files in the folder
(a ``labels.csv``, say) are ignored.
"""

from __future__ import annotations

import logging
import math
import pathlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from ptqcli.errors import DataError, Option, OptionError
from ptqcli.graph import InputSpec

ARRAY_SUFFIXES = (".npy", ".npz", ".pb")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SUFFIXES = ARRAY_SUFFIXES + IMAGE_SUFFIXES

Feed = dict[str, np.ndarray]

log = logging.getLogger("ptq")


@dataclass(frozen=True)
class ImageSpec:
    """How an image file becomes a model input.

    Pixels are scaled to ``[0, 1]``, resized to ``size`` (height, width; default: the model's
    static size, else the image's own), normalized as ``(x - mean) / std`` per channel, ordered
    RGB (or BGR with ``bgr``) and laid out as ``NCHW`` or ``NHWC``.
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    bgr: bool = False

    def __post_init__(self) -> None:
        # Checked here, before any sample is read: a zero std would turn every pixel into inf/NaN.
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise OptionError(Option("size"), f" must be two positive sizes (height, width), got {self.size!r}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if not values or not all(math.isfinite(v) for v in values):
                raise OptionError(Option(name), f" must be finite numbers, got {values!r}")
        if any(v == 0 for v in self.std):
            raise OptionError(Option("std"), f" must not contain 0 (pixels are divided by it), got {self.std!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise OptionError(Option("layout"), f" must be NCHW or NHWC, got {self.layout!r}")


@dataclass(frozen=True)
class Batch:
    """Model feeds for one or more samples, and the files they came from."""

    feeds: Feed
    files: tuple[pathlib.Path, ...]
    count: int


def list_samples(folder: str | pathlib.Path, *, limit: int | None = None) -> list[pathlib.Path]:
    """The sample files of ``folder`` in sorted order (the first ``limit`` of them).

    Hidden files (names starting with ``.``, such as the ``._0001.npy`` companions macOS writes
    on foreign file systems) are not samples; how many were skipped is logged on ``ptq``."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory")
    found = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES]
    files = sorted(p for p in found if not p.name.startswith("."))
    hidden = len(found) - len(files)
    if hidden:
        log.warning(f"{folder}: skipped {hidden} hidden file{'s' if hidden > 1 else ''} "
                    f"(names starting with '.', e.g. {min(p.name for p in found if p.name.startswith('.'))!r})")
    if not files:
        raise DataError(f"{folder}: no samples (files ending in {', '.join(SUFFIXES)})")
    return files[:limit] if limit is not None else files


def image_note(files: Sequence[pathlib.Path], inputs: Sequence[InputSpec], image: ImageSpec) -> None:
    """Log on ``ptq`` what reading the images will do that the user did not ask for: a resize to
    the model's own size, a change to grayscale or colour.  The first image stands for all."""
    first = next((f for f in files if f.suffix.lower() in IMAGE_SUFFIXES), None)
    if first is None or len(inputs) != 1 or len(inputs[0].shape) != 4:
        return
    from PIL import Image

    spec = inputs[0]
    try:
        with Image.open(first) as img:
            height, width, mode = img.height, img.width, img.mode
    except Exception:  # the read itself reports an unreadable image, naming it
        return
    changes = []
    size = _model_hw(spec, image.layout)
    if image.size is None and size is not None and size != (height, width):
        changes.append(f"resized to {size[0]}x{size[1]}, the model input's size (the first, {first.name}, "
                       f"is {height}x{width})")
    want = _mode(spec, image)
    if want == "L" and mode not in ("L", "1", "I", "I;16", "F"):
        changes.append(f"converted from {mode} to grayscale (input {spec.name!r} has 1 channel)")
    elif want == "RGB" and mode in ("L", "1", "I", "I;16", "F", "LA"):
        changes.append(f"converted from grayscale to RGB (input {spec.name!r} has 3 channels)")
    if changes:
        log.warning("image samples are " + " and ".join(changes))


#: How each NumPy file starts (``.npz`` files are zip archives).  NumPy reads any other content
#: as a pickle, and with pickles refused says only "allow_pickle=False", which misleads.
MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK\x03\x04"}


def _load_arrays(path: pathlib.Path, inputs: Sequence[InputSpec]) -> Feed:
    suffix = path.suffix.lower()
    if suffix in MAGIC:
        try:
            with open(path, "rb") as f:
                head = f.read(len(MAGIC[suffix]))
        except OSError as exc:
            raise DataError(f"{path}: cannot read sample ({exc.strerror})") from None
        if head != MAGIC[suffix]:
            raise DataError(f"{path}: not a NumPy {suffix} file (it does not start with the {suffix} header)")
    try:
        if suffix == ".npy":
            arrays = {inputs[0].name: np.load(path, allow_pickle=False)} if len(inputs) == 1 else None
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        else:
            import onnx
            from onnx import numpy_helper

            tensor = onnx.TensorProto()
            tensor.ParseFromString(path.read_bytes())
            arrays = {inputs[0].name: numpy_helper.to_array(tensor)} if len(inputs) == 1 else None
    except Exception as exc:
        raise DataError(f"{path}: cannot read sample ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if arrays is None:
        names = ", ".join(i.name for i in inputs)
        raise DataError(f"{path}: the model has {len(inputs)} inputs ({names}); use .npz files "
                        f"that map each input name to an array")
    return arrays


def _model_hw(spec: InputSpec, layout: str) -> tuple[int, int] | None:
    if len(spec.shape) != 4:
        return None
    h, w = (spec.shape[2], spec.shape[3]) if layout == "NCHW" else (spec.shape[1], spec.shape[2])
    return (h, w) if isinstance(h, int) and isinstance(w, int) else None


def _load_image(path: pathlib.Path, spec: InputSpec, image: ImageSpec) -> np.ndarray:
    from PIL import Image

    if len(spec.shape) != 4:
        raise DataError(f"{path}: image samples need a rank-4 model input; {spec.name!r} has "
                        f"rank {len(spec.shape)}")
    try:
        with Image.open(path) as img:
            img = img.convert(_mode(spec, image))
            size = image.size or _model_hw(spec, image.layout)
            if size is not None and (img.height, img.width) != tuple(size):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except Image.DecompressionBombError as exc:  # not an OSError: Pillow's guard on the pixel count
        raise DataError(f"{path}: image too large to decode ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if image.bgr:
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(image.mean, dtype=np.float32)
    std = np.asarray(image.std, dtype=np.float32)
    for name, values in (("mean", mean), ("std", std)):
        if values.size not in (1, pixels.shape[2]):
            raise OptionError(Option(name), f" has {values.size} values; {path.name} has {pixels.shape[2]} channels")
    pixels = (pixels - mean) / std
    if image.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels[None], dtype=np.float32)


def _mode(spec: InputSpec, image: ImageSpec) -> str:
    """The Pillow mode an image is converted to for ``spec``: grayscale for one channel."""
    channels = spec.shape[1] if image.layout == "NCHW" else spec.shape[3]
    return "L" if channels == 1 else "RGB"


def _check(path: pathlib.Path, spec: InputSpec, array: np.ndarray) -> np.ndarray:
    rank = len(spec.shape)
    if array.ndim == rank - 1:
        array = array[None]
    if array.ndim != rank:
        raise DataError(f"{path}: input {spec.name!r} expects rank {rank} {_fmt(spec.shape)}, "
                        f"got shape {tuple(array.shape)}")
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
        if isinstance(want, int) and want != got:
            raise DataError(f"{path}: input {spec.name!r} expects shape {_fmt(spec.shape)}, "
                            f"got {tuple(array.shape)} (dimension {axis})")
    want_kind = np.dtype(spec.dtype).kind
    kinds = {"f": "f", "i": "iu", "u": "iu", "b": "b"}
    if array.dtype.kind not in kinds.get(want_kind, want_kind):
        raise DataError(f"{path}: input {spec.name!r} expects {np.dtype(spec.dtype).name}, "
                        f"got {array.dtype.name}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"{path}: input {spec.name!r} holds NaN or infinite values")
    if want_kind in "iu" and array.size:
        info = np.iinfo(spec.dtype)
        if array.min() < info.min or array.max() > info.max:
            raise DataError(f"{path}: input {spec.name!r} has values outside {np.dtype(spec.dtype).name}")
    return np.ascontiguousarray(array.astype(spec.dtype, copy=False))


def _fmt(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def read_sample(path: pathlib.Path, inputs: Sequence[InputSpec], image: ImageSpec | None = None) -> Feed:
    """The model feeds of one file, checked against ``inputs``."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        if len(inputs) != 1:
            raise DataError(f"{path}: image samples need a single-input model")
        arrays = {inputs[0].name: _load_image(path, inputs[0], image or ImageSpec())}
    else:
        arrays = _load_arrays(path, inputs)
    expected = {i.name for i in inputs}
    missing = sorted(expected - arrays.keys())
    extra = sorted(arrays.keys() - expected)
    if missing or extra:
        parts = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + \
                ([f"unknown {', '.join(map(repr, extra))}"] if extra else [])
        raise DataError(f"{path}: inputs do not match the model ({'; '.join(parts)})")
    return {spec.name: _check(path, spec, arrays[spec.name]) for spec in inputs}


def _batchable(inputs: Sequence[InputSpec]) -> bool:
    return all(spec.shape and not isinstance(spec.shape[0], int) for spec in inputs)


#: With ``batch_size=None``, samples are stacked until a batch holds about this many input values:
#: small inputs gain from fewer runtime calls, large ones lose cache locality when stacked.
AUTO_BATCH_VALUES = 1 << 18
AUTO_BATCH_MAX = 16


#: What ``batches`` does with a sample that fails its checks: stop with its ``DataError``, or
#: (``skip``) hand the file and its error to a callback and go on without the sample.
BadSample = Callable[[pathlib.Path, DataError], None]


def batch_limit(shapes: dict[str, tuple[int, ...]], inputs: Sequence[InputSpec], batch_size: int | None) -> int:
    """Samples per batch when the first file's inputs have ``shapes``: ``batch_size``, or sized
    from the first sample (``AUTO_BATCH_VALUES``); 1 when an input's leading axis is fixed."""
    if not _batchable(inputs):
        return 1
    if batch_size is not None:
        return batch_size
    values = sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes.values())
    return max(1, min(AUTO_BATCH_MAX, AUTO_BATCH_VALUES // max(values, 1)))


def _joins(count: int, limit: int, shapes: dict[str, tuple[int, ...]], batch: dict[str, tuple[int, ...]]) -> bool:
    """Whether a file of ``shapes`` joins a batch of ``count`` files whose first has ``batch``."""
    return count < limit and all(shapes[k][1:] == batch[k][1:] for k in shapes)


def batch_starts(shapes: Sequence[dict[str, tuple[int, ...]]], inputs: Sequence[InputSpec],
                 batch_size: int | None) -> list[int]:
    """The index of the first file of each batch ``batches`` makes of files with these input
    shapes (``sample_shapes``), without reading them."""
    if not shapes:
        return []
    limit = batch_limit(shapes[0], inputs, batch_size)
    starts = [0]
    for i, s in enumerate(shapes[1:], 1):
        if not _joins(i - starts[-1], limit, s, shapes[starts[-1]]):
            starts.append(i)
    return starts


def sample_shapes(path: pathlib.Path, inputs: Sequence[InputSpec], image: ImageSpec | None = None) -> dict[str, tuple[int, ...]]:
    """The input shapes ``read_sample`` gives for ``path``; of a ``.npy`` file only the header
    is read."""
    if path.suffix.lower() == ".npy" and len(inputs) == 1:
        try:
            with open(path, "rb") as f:
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(f)]
                shape = read(f)[0]
        except Exception:  # read_sample says what is wrong with the file
            pass
        else:
            rank = len(inputs[0].shape)
            return {inputs[0].name: (1,) + shape if len(shape) == rank - 1 else shape}
    return {k: v.shape for k, v in read_sample(path, inputs, image).items()}


def _first_shapes(files: Sequence[pathlib.Path], inputs: Sequence[InputSpec], image: ImageSpec | None,
                  skip_bad: bool) -> dict[str, tuple[int, ...]]:
    """The input shapes of the first of ``files`` that reads (of the first, without ``skip_bad``)."""
    if not skip_bad:
        return sample_shapes(files[0], inputs, image)
    for path in files:  # read whole: a sample skipped for its values has a sound header
        try:
            return {k: v.shape for k, v in read_sample(path, inputs, image).items()}
        except DataError:
            pass
    raise DataError(f"{files[0].parent if files else '.'}: every sample before the restart point failed its checks")


def batches(files: Sequence[pathlib.Path], inputs: Sequence[InputSpec], *, batch_size: int | None = None,
            image: ImageSpec | None = None, start: int = 0, on_bad: BadSample | None = None) -> Iterator[Batch]:
    """Feeds in file order; consecutive samples of equal shapes are stacked up to ``batch_size``
    (``None``: sized from the first sample, see ``AUTO_BATCH_VALUES``) when every input has a
    dynamic leading dimension.  A sample that cannot be read or fails its checks raises its
    ``DataError``, or with ``on_bad`` is passed to it and left out, as if it were not there.

    ``start``: begin at ``files[start]``, which must be where a batch began (the batches are
    then those of a read from the first file, less the ones before it: the batch size still
    comes from the first readable file, and a batch ends where it would have)."""
    if batch_size is not None and batch_size < 1:
        raise OptionError(Option("batch_size"), f" must be at least 1, got {batch_size}")
    limit = None
    if start and files:
        limit = batch_limit(_first_shapes(files[:start], inputs, image, on_bad is not None), inputs, batch_size)
    pending: list[tuple[pathlib.Path, Feed]] = []

    def flush() -> Batch:
        feeds = {name: np.concatenate([f[name] for _, f in pending]) if len(pending) > 1 else pending[0][1][name]
                 for name in pending[0][1]}
        count = len(next(iter(feeds.values())))
        return Batch(feeds, tuple(p for p, _ in pending), count)

    for path in files[start:]:
        try:
            feed = read_sample(path, inputs, image)
        except DataError as exc:
            if on_bad is None:
                raise
            on_bad(path, exc)
            continue
        shapes = {k: v.shape for k, v in feed.items()}
        if limit is None:
            limit = batch_limit(shapes, inputs, batch_size)
        if pending and not _joins(len(pending), limit, shapes, {k: v.shape for k, v in pending[0][1].items()}):
            yield flush()
            pending = []
        pending.append((path, feed))
    if pending:
        yield flush()
