"""The evaluate benchmark still runs: its smoke mode on the tiny checkpoint (the figures mean nothing here;
what is checked is that the code path it times exists and prints its table)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_evaluate_benchmark_smoke_run_prints_its_table(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/bench_evaluate.py", "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=400,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "CLIP_SURGERY_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "images per minute" in done.stdout and "six / one" in done.stdout
