"""surgery.memory: freed heap pages really go back to the operating system."""

from __future__ import annotations

import threading
import time

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


def _join_timers_started_since(before: set) -> None:
    """Wait until every timer thread started since `before` has ended (fired or cancelled)."""
    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer) and thread not in before:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a timer never ended"


def test_idle_trim_waits_for_a_quiet_period_and_trims_once():
    from surgery.memory import IdleTrim

    before = set(threading.enumerate())
    trims = []
    fired = threading.Event()

    def trim():
        trims.append(time.monotonic())
        fired.set()

    idle = IdleTrim(idle_s=0.3, trim=trim)
    started = time.monotonic()
    idle.job_done()
    while time.monotonic() - started < 1.0:  # jobs finishing every 0.05 s for over three quiet periods
        assert not fired.wait(timeout=0.05), "trimmed while jobs were still finishing"
        idle.job_done()
    last_job = time.monotonic()
    idle.job_done()
    assert fired.wait(timeout=60), "never trimmed after the jobs stopped"
    _join_timers_started_since(before)
    assert len(trims) == 1  # once, not once per job
    assert trims[0] - last_job >= 0.3  # a quiet period after the last job, not the first

    idle.job_done()
    idle.cancel()  # the app closing
    _join_timers_started_since(before)
    assert len(trims) == 1
