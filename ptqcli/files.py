"""Output files: written whole or not at all, never over an input, one writer at a time.

- ``staged(path, ...)`` gives temporary names in the folders of the outputs; when the block ends
  normally each is flushed to disk and renamed onto its output (a rename within one folder is
  atomic), otherwise every temporary file is removed, whatever the exception (Ctrl-C included).
  A new output gets the mode ``open()`` would give it under the current umask; an output that
  is replaced keeps its mode (``tempfile.mkstemp`` alone would leave 0600 either way).
- ``claimed(outputs, inputs)`` refuses an output that is one of the command's inputs, however
  the path is spelled, checks that each output folder accepts new files before any work starts,
  and holds a lock per output until the block ends, so that a second process writing the same
  output stops at once with a message instead of silently overwriting the first one's result.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import secrets
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

from ptqcli.errors import Option, OptionError, OutputError

PathLike = str | os.PathLike


def _temporary(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _create_temporary(path: pathlib.Path) -> pathlib.Path:
    """A new empty file beside ``path``, with mode 0o666 less the umask: the kernel applies the
    umask to a mode given to ``os.open`` exactly as ``open()`` does."""
    tmp = _temporary(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {str(path.parent)!r} ({exc.strerror})") from None
    return tmp


def _fsync_folder(folder: pathlib.Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; folders cannot be opened on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: pathlib.Path, path: pathlib.Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    try:
        os.chmod(tmp, path.stat().st_mode & 0o7777)  # a replaced file keeps its mode
    except FileNotFoundError:
        pass
    os.replace(tmp, path)


@contextlib.contextmanager
def staged(*paths: PathLike) -> Iterator[tuple[pathlib.Path, ...]]:
    """Temporary files (created empty) standing for ``paths``; renamed onto them, in order,
    when the block ends normally; all removed when it does not.  Errors creating or renaming
    are ``OutputError``s naming the output."""
    targets = [pathlib.Path(p) for p in paths]
    temps: list[pathlib.Path] = []
    try:
        for path in targets:
            temps.append(_create_temporary(path))
        yield tuple(temps)
        for tmp, path in zip(temps, targets):
            try:
                _publish(tmp, path)
            except OSError as exc:
                raise OutputError(f"{path}: cannot write ({exc.strerror})") from None
        for folder in dict.fromkeys(p.parent for p in targets):
            _fsync_folder(folder)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def write_atomic(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` whole or not at all: ``write(f)`` fills a temporary file beside it."""
    with staged(path) as (tmp,):
        with open(tmp, "wb") as f:
            try:
                write(f)
            except Exception as exc:
                raise _interruption(exc) or exc


def _interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM behind ``exc``, if a library turned one into another error while it
    cleaned up (``zipfile``, interrupted inside ``np.savez``, complains that a member is open)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


def write_text_atomic(path: PathLike, text: str) -> None:
    """``write_atomic`` for UTF-8 text."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def identity(path: PathLike) -> tuple[int, int] | None:
    """Which file ``path`` names now, as (device, inode); None if none.  A file written by
    ``staged`` gets a new identity the moment it is renamed into place."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def check_not_inputs(outputs: Sequence[tuple[str, PathLike]], inputs: Iterable[tuple[str, PathLike]]) -> None:
    """Refuse an output (``(option name, path)``) that is one of the inputs (``(what it is,
    path)``), naming both: the same inode where both exist (links, bind mounts), else the same
    path once symbolic links are resolved.  Each path is looked at once, not once per pair (a
    folder of 5,000 samples made that 1.5 s of every start)."""
    inputs = list(inputs)
    by_inode: dict[tuple[int, int], tuple[str, PathLike]] = {}
    by_path: dict[str, tuple[str, PathLike]] = {}
    for role, path in inputs:
        key = identity(path)
        if key is not None:
            by_inode.setdefault(key, (role, path))
        else:
            by_path.setdefault(os.path.realpath(path), (role, path))
    for option, out in outputs:
        key = identity(out)
        hit = by_inode.get(key) if key is not None else None
        if hit is None:  # an input that names no file yet may be spelled like the output
            hit = by_path.get(os.path.realpath(out))
        if hit is not None:
            role, path = hit
            raise OptionError(Option(option, str(out)), f": that is the {role} {str(path)!r}; "
                              f"writing it would destroy an input")


def _lock_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive lock for writing ``path`` (a lock file beside it, removed at the end)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent writers are not detected
        yield
        return
    lock = _lock_path(path)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write in {str(path.parent)!r} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"{path}: cannot lock {lock.name} ({exc.strerror})") from None
            raise OutputError(f"{path}: another ptq process{f' (pid {holder})' if holder else ''} is "
                              f"writing it; wait for it to finish, or choose another output") from None
        # The holder before us may have removed the lock file after we opened it: then our lock
        # is on a file nobody else will look at, and we must take the one at the path again.
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _check_writable(option: str, path: pathlib.Path) -> None:
    """Create and remove a file beside ``path``: permission bits alone do not tell (root,
    read-only mounts, ACLs)."""
    if path.is_dir():
        raise OptionError(Option(option, str(path)), ": is a folder; give a file name")
    if not path.parent.is_dir():
        raise OptionError(Option(option, str(path)), f": folder {str(path.parent)!r} does not exist")
    os.unlink(_create_temporary(path))


@contextlib.contextmanager
def claimed(outputs: Sequence[tuple[str, PathLike]], inputs: Iterable[tuple[str, PathLike]] = ()) -> Iterator[None]:
    """Check the outputs (``(option name, path)``) before any work: none is an input (``(what,
    path)``, e.g. ``("model", "m.onnx")``), each folder takes new files; then hold a lock on each
    output until the block ends."""
    check_not_inputs(outputs, inputs)
    for option, path in outputs:
        _check_writable(option, pathlib.Path(path))
    with contextlib.ExitStack() as stack:
        for path in sorted({pathlib.Path(p) for _, p in outputs}, key=str):
            stack.enter_context(_locked(path))
        yield
