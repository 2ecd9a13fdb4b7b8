"""The process's host-memory policy, train.py's --malloc: how glibc's allocator treats tensor memory.

With glibc's defaults a block over its mmap threshold (128 KB at first; it adapts up to 32 MB) is mapped
fresh and unmapped when freed, so every large activation and gradient of every CPU step touches new pages:
one page fault per 4 KB. `reuse` serves the blocks from the heap instead (M_MMAP_MAX 0; a thread other than
the main one still maps blocks over its 64 MB arena, but the CPU forward and backward allocate on the main
thread) and returns free memory at the heap's top only beyond 1 GB (M_TRIM_THRESHOLD): the resident memory
stays near the process's peak, ~15 % above glibc's defaults for the small nets measured. bench/train_loop.py
measures the speed (1.5-1.65x the images/s of the CPU study's AirbenchNet trials on 2 cores; ResNet18 width
64 is compute-bound). Not measured with --cuda, where the host allocates little. `system` keeps glibc's
defaults.

The setting is process-wide and one-way: glibc cannot go back to its adaptive defaults, so a later `system`
in the same process warns and changes nothing. Not glibc (macOS, musl): nothing is set; an allocator preloaded
with LD_PRELOAD (jemalloc, tcmalloc) ignores glibc's settings.
"""
import ctypes
import platform
import warnings

import config

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
# under `reuse`, free memory at the top of the heap is returned to the system only beyond this much
KEEP_BYTES = 1 << 30
# whether this process runs with `reuse`
_reused = False


def use_malloc(mode):
    """Apply --malloc MODE (one of config.MALLOC_MODES) to this process; returns whether `reuse` is in effect."""
    global _reused
    if mode not in config.MALLOC_MODES:
        raise ValueError(f"malloc mode {mode!r}: expected one of {config.MALLOC_MODES}")
    if mode == "system":
        if _reused:
            warnings.warn("--malloc system: this process already runs with --malloc reuse (glibc cannot undo it)")
        return _reused
    if not _reused and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        _reused = _glibc_reuse()
    return _reused


def _glibc_reuse():
    """glibc's mallopt: large blocks from the heap, the heap's top trimmed only beyond KEEP_BYTES; whether both took."""
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    trimmed = mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES)
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(trimmed)
