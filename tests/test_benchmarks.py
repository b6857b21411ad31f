"""The benchmarks still run: each one's smoke mode on the tiny checkpoints (their figures mean nothing here;
what is checked is that the code paths they drive exist and agree with the app's and the engine's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_pipeline_benchmark_smoke_run_passes_its_checks():
    done = _run("benchmarks/bench_pipeline.py", "--smoke")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "smoke checks passed" in done.stdout


def test_calibrate_benchmark_smoke_run_completes():
    done = _run("benchmarks/bench_calibrate.py", "--smoke", "--skip-ray")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "serial" in done.stdout and "workers" in done.stdout


def test_sam2_benchmark_smoke_run_prints_its_table():
    done = _run("benchmarks/bench_sam2.py", "--smoke", "--models", "vit_b,sam2.1_hiera_tiny", "--allocator", "reuse")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| vit_b") or line.startswith("| sam2.1")]
    assert len(rows) == 2 and "reuse allocator" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the GPU benchmark really runs (minutes)")
def test_gpu_benchmark_says_it_needs_cuda():
    done = _run("benchmarks/bench_gpu.py", timeout=120)
    assert done.returncode == 2 and done.stdout.strip() == (
        "error: no CUDA GPU here; this benchmark needs one (bench_pipeline.py measures the CPU)")


def test_methods_benchmark_smoke_run_covers_every_method():
    done = _run("benchmarks/bench_methods.py", "--smoke")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert all(f"+{method}" in done.stdout for method in ("scclip", "resclip", "proxyclip")), done.stdout


def test_api_session_benchmark_smoke_run_compares_the_sam_models():
    done = _run("benchmarks/bench_api_session.py", "--smoke")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| vit_b |" in done.stdout and "| sam2.1_hiera_tiny |" in done.stdout


def test_guided_methods_benchmark_times_each_step_on_the_tiny_checkpoints():
    done = _run("benchmarks/bench_guided_methods.py", "--reps", "1", "--resolution", "224")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = [line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert steps == ["trunk", "naclip", "scclip", "resclip (3 labels)", "proxyclip", "sam proxy (stock)",
                     "sam proxy (fast)"], done.stdout


def test_evaluate_benchmark_smoke_run_compares_one_method_with_six():
    done = _run("benchmarks/bench_evaluate.py", "--smoke")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| one (sclip) |" in done.stdout and "six / one = " in done.stdout


def test_sam_encoder_benchmark_smoke_run_compares_the_attentions():
    done = _run("benchmarks/bench_sam_encoder.py", "--smoke")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "max |fast - stock| (fp32 embedding)" in done.stdout
