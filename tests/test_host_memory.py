"""host_memory.py (train.py's --malloc). The setting is process-wide and one-way, so every check that really
sets it runs in a process of its own; in this process conftest keeps glibc's allocator as it is."""
import platform
import subprocess
import sys

import pytest

import host_memory
from conftest import ROOT

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def run_python(script, *args):
    """stdout of `python -c script args` in the project root; the script must succeed."""
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


# A 40 MB tensor, over glibc's largest mmap threshold (32 MB): with its defaults each one is mapped fresh. With
# reuse the heap grows over the first few (Python's own small blocks land between them), then serves them all.
_ALLOCATE_AND_COUNT_FAULTS = """
import resource, sys, torch, host_memory
print(host_memory.use_malloc(sys.argv[1]))
for _ in range(30):
    torch.empty(10_000_000).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(10_000_000).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_malloc_reuse_keeps_freed_tensor_memory_mapped():
    faults = {}
    for mode in ("reuse", "system"):
        applied, count = run_python(_ALLOCATE_AND_COUNT_FAULTS, mode).split()
        assert applied == str(mode == "reuse")
        faults[mode] = int(count)
    # system: each 40 MB block faults its pages in again (~10,000 4 KB pages, or 20 huge pages)
    assert faults["system"] >= 10 * 20 and faults["reuse"] < faults["system"] / 10, faults


_ONE_WAY = """
import warnings, host_memory
print(host_memory.use_malloc("system"), host_memory.use_malloc("reuse"))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print(host_memory.use_malloc("system"), host_memory.use_malloc("reuse"))
print(*(str(w.message) for w in caught), sep="\\n")
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_malloc_reuse_is_one_way():
    before, after, warning = run_python(_ONE_WAY).splitlines()
    assert before == "False True"  # system sets nothing; reuse is then in effect
    assert after == "True True"  # a later system cannot undo it ...
    assert "cannot undo" in warning  # ... and says so


def test_malloc_modes_are_checked():
    with pytest.raises(ValueError, match="malloc mode 'jemalloc'"):
        host_memory.use_malloc("jemalloc")


def test_malloc_reuse_sets_nothing_without_glibc(monkeypatch):
    def no_glibc():
        raise AssertionError("mallopt called on a machine without glibc")

    monkeypatch.setattr(host_memory, "_glibc_reuse", no_glibc)
    for system, libc in (("Darwin", ("", "")), ("Linux", ("musl", "1.2"))):
        monkeypatch.setattr(host_memory.platform, "system", lambda: system)
        monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: libc)
        assert host_memory.use_malloc("reuse") is False and host_memory.use_malloc("system") is False

