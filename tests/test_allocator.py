from __future__ import annotations

import subprocess
import sys

import pytest

from ribsr.allocator import tune_cpu_allocator

# Where a fresh process's 64 MiB tensor lives: in glibc's heap (reusable after it is freed) or in pages of its own
# mapping (mapped and zero-filled anew on every allocation). Read from /proc/self/maps.
_CODE = """
import sys, torch
from ribsr.allocator import tune_cpu_allocator
if sys.argv[1] == "tuned":
    assert tune_cpu_allocator()
t = torch.empty(16 * 2**20)  # 64 MiB, above glibc's default mmap threshold (32 MiB at most)
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
        print("heap" if lo <= t.data_ptr() < hi else "mapped")
        break
else:
    print("mapped")
"""


def _where(mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", _CODE, mode], capture_output=True, text=True, check=True).stdout
    return out.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")
def test_tuned_allocator_keeps_large_tensors_in_the_reusable_heap():
    if not tune_cpu_allocator():
        pytest.skip("the C library is not glibc")
    assert _where("plain") == "mapped"
    assert _where("tuned") == "heap"


def test_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="-1"):
        tune_cpu_allocator(-1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc is Linux-only")
def test_one_libc_lookup_serves_tuning_and_trimming(monkeypatch):
    from ribsr import allocator, memory

    assert allocator.libc() is allocator.libc()  # opened once
    calls = []
    monkeypatch.setattr(memory, "malloc_trim", lambda: calls.append("trim") or True)
    memory.release_cpu_memory()
    assert calls == ["trim"]
    if getattr(allocator.libc(), "malloc_trim", None) is not None:
        assert isinstance(allocator.malloc_trim(), bool)


def test_no_c_library_is_a_no_op(monkeypatch):
    from ribsr import allocator

    monkeypatch.setattr(allocator, "libc", lambda: None)
    assert allocator.malloc_trim() is False
    assert allocator.tune_cpu_allocator() is False
