"""Run one command in its own process with a memory cap and a timeout; measure it.

The child gets ``RLIMIT_AS`` (address space) so a quantizer that grows without bound fails with
an allocation error instead of taking the machine down; it runs in its own session so a timeout
kills it and anything it started.  Peak RSS comes from ``os.wait4``'s rusage of that one child
(``ru_maxrss``, KiB on Linux), which includes its waited-for descendants.  On a shared machine a
benchmark can be given the CPU first with ``echo -20 > /proc/$$/autogroup`` in its shell (Linux
schedules sessions, not processes, fairly); the child's new session inherits that priority.
"""

from __future__ import annotations

import os
import pathlib
import resource
import signal
import subprocess
import time
from dataclasses import dataclass

GIB = 1 << 30
OOM_MARKERS = ("MemoryError", "bad_alloc", "Failed to allocate", "Cannot allocate memory", "out of memory",
               "Unable to allocate", "std::length_error")


@dataclass(frozen=True)
class Outcome:
    """How a child process ended: status "ok", "OOM", "timeout" or "error", and its costs."""

    status: str
    seconds: float
    peak_rss_mb: float
    returncode: int | None
    stdout: str
    stderr_tail: str


def _autogroup_nice() -> int | None:
    """This process's autogroup niceness (Linux with ``sched_autogroup``), if readable."""
    try:
        return int(pathlib.Path("/proc/self/autogroup").read_text().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return None


def _limit(mem_bytes: int):
    nice = _autogroup_nice()

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        if nice:  # its own session is a new autogroup: keep the priority the benchmark was given
            try:
                pathlib.Path("/proc/self/autogroup").write_text(str(nice))
            except OSError:
                pass
    return apply


def run(cmd: list[str], *, timeout: float, mem_gib: float = 16.0, log: pathlib.Path | None = None) -> Outcome:
    """Run ``cmd``; its stdout is returned, its stderr goes to ``log`` (last lines kept in the outcome)."""
    log = log or pathlib.Path(os.devnull)
    log.parent.mkdir(parents=True, exist_ok=True)
    out_path = log.with_suffix(".stdout") if log != pathlib.Path(os.devnull) else pathlib.Path(os.devnull)
    start = time.perf_counter()
    with open(log, "w") as err, open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, preexec_fn=_limit(int(mem_gib * GIB)),
                                start_new_session=True)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc  # reaped here; keep Popen from waiting again
    stderr = log.read_text(errors="replace") if log.exists() else ""
    stdout = out_path.read_text(errors="replace") if out_path.exists() else ""
    tail = "\n".join(stderr.splitlines()[-5:])
    if timed_out:
        state = "timeout"
    elif rc == 0:
        state = "ok"
    elif rc == -signal.SIGKILL or any(m in stderr for m in OOM_MARKERS):
        state = "OOM"
    else:
        state = "error"
    return Outcome(state, seconds, usage.ru_maxrss / 1024.0, rc, stdout, tail)
