"""The process's memory as the watchdog and the engine sample it: resident set size, page faults per thread, and
returning the C heap's free pages to the OS. Linux ``/proc`` and glibc; elsewhere each reads 0 or does nothing. No
numpy, no onnxruntime: the server extension's import of the deadline machinery stays light."""

from __future__ import annotations

import ctypes
import os
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_statm: int | None = None  # an open /proc/self/statm: re-read with pread, 2 µs instead of 16 µs for open + read


def process_rss() -> int:
    """This process's resident set size in bytes (Linux ``/proc/self/statm``; 0 where there is none)."""
    global _statm
    try:
        if _statm is None:
            _statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(_statm, 128, 0).split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _reopen_after_fork() -> None:
    """/proc/self was resolved when the file was opened: in a child it would still read the parent's memory."""
    global _statm
    _statm = None  # the inherited descriptor is left open: closing it is harmless but not needed (CLOEXEC)


os.register_at_fork(after_in_child=_reopen_after_fork)

try:
    import resource

    _RUSAGE_THREAD: int | None = resource.RUSAGE_THREAD  # Linux
except (ImportError, AttributeError):  # pragma: no cover - not Linux
    _RUSAGE_THREAD = None


def own_faults() -> int:
    """Pages the calling thread has taken from the OS so far (minor page faults, ``getrusage(RUSAGE_THREAD)``, under
    1 µs); 0 where the OS does not count them per thread."""
    return resource.getrusage(_RUSAGE_THREAD).ru_minflt if _RUSAGE_THREAD is not None else 0


def thread_faults(native_id: int) -> int:
    """Minor page faults of thread ``native_id`` of this process so far (``/proc/self/task/<id>/stat``, field 10);
    0 when it cannot be read (the thread is gone, or no /proc)."""
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[7])
    except (OSError, ValueError, IndexError):
        return 0


_libc: Any = None


def release_free_memory() -> None:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim(0)``). A run stopped for memory frees its strings
    into the heap between the small regions the shared arena grew by (``kSameAsRequested``), so no page is free until
    the arena has returned those (the engine shrinks it first); without both, each stopped run kept about its budget
    resident (four 32 MiB stops: +130 MB, kept). Does nothing where there is no glibc."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)
