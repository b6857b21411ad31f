"""surgery.memory: freed heap pages really go back to the operating system."""

from __future__ import annotations

import pytest

from surgery.memory import release_freed_memory


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def test_release_freed_memory_returns_free_heap_pages():
    # 2,000 blocks of 96 KiB sit on the heap (below malloc's mmap threshold); freeing all but the
    # last leaves ~190 MB of free pages that malloc keeps, since the live block pins the heap top.
    blocks = [bytearray(96 * 1024) for _ in range(2000)]
    for block in blocks:
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page
    keep = blocks[-1]
    del blocks
    before = rss_mb()
    if not release_freed_memory():
        pytest.skip("no malloc_trim in this C library (glibc has it: CI and the Space)")
    after = rss_mb()
    assert before - after > 100, (before, after)
    assert keep[0] == 1  # the live block is untouched


def test_idle_trim_waits_for_a_quiet_period_and_trims_once():
    import time

    from surgery.memory import IdleTrim

    trims = []
    idle = IdleTrim(idle_s=0.3, trim=lambda: trims.append(time.monotonic()))
    started = time.monotonic()
    for _ in range(4):  # jobs finishing every 0.1 s keep postponing it
        idle.job_done()
        time.sleep(0.1)
    assert trims == []
    time.sleep(1.0)
    assert len(trims) == 1 and trims[0] - started >= 0.3 + 0.3  # 0.3 s after the last job, not the first
    idle.job_done()
    idle.cancel()  # the app closing
    time.sleep(0.5)
    assert len(trims) == 1
