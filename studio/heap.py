"""glibc malloc tuning for a long-running server (no-ops where libc is not glibc).

Imports nothing heavy, so `launch.py` can cap the arenas before torch or Gradio start threads."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _glibc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each serving thread its own malloc arena, so a threaded server's RSS creeps up
    with every preview; capping the arenas (before threads start) keeps memory bounded."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-8, arenas)  # M_ARENA_MAX


def return_freed_heap() -> None:
    """Give freed heap pages back to the OS (`malloc_trim`). Previews build and drop a sliced
    model of another size each time; without this glibc keeps the freed chunks and a long-running
    server's resident memory sits hundreds of MiB above what it uses."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
