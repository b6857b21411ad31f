"""How long SAM vit_b takes to encode one 1024×1024 image: stock attention vs the fast one, fp32 vs bf16.

Real weights are never downloaded: a full-size random vit_b checkpoint is
written once (to the temp dir, reused by later runs) and loaded through
`surgery.loading.load_segmenter`, exactly as the app loads Meta's file. Random
weights cost the same time as real ones. `--smoke` runs the same comparison on
the tests' small random SAM (tests/data/sam_tiny.safetensors) in seconds, to
check that the script works; its times say nothing about vit_b.

    .venv/bin/python benchmarks/bench_sam_encoder.py [--threads 2] [--runs 3] [--json out.json] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the engine, and tests/checkpoints.py

from checkpoints import VIT_B_ARCH, write_random_sam_checkpoint  # noqa: E402

from surgery.loading import load_segmenter  # noqa: E402
from surgery.precision import bf16_supported  # noqa: E402
from surgery.sam.fast_encoder import install_fast_attention, uninstall_fast_attention  # noqa: E402

CHECKPOINT = Path(tempfile.gettempdir()) / "surgery-bench" / "sam_vit_b_random_seed0.pth"
TINY_SAM = ROOT / "tests" / "data" / "sam_tiny.safetensors"


def random_vit_b_checkpoint(path: Path = CHECKPOINT) -> Path:
    """The random vit_b file, written on first use only (it is ~360 MB)."""
    if not path.is_file():
        print(f"writing random vit_b checkpoint to {path} …", flush=True)
        partial = path.with_suffix(".partial.pth")
        write_random_sam_checkpoint(partial, VIT_B_ARCH, seed=0)
        partial.replace(path)
    return path


def load_stock_sam(path: Path):
    """The SAM in `path`, loaded the app's way (`load_segmenter`), with stock attention."""
    sam = load_segmenter("vit_b", checkpoint=path).sam
    uninstall_fast_attention(sam.image_encoder)
    return sam


def encode(encoder: torch.nn.Module, pixels: torch.Tensor, bf16: bool) -> tuple[float, torch.Tensor]:
    """Seconds for one encoding and the (float32) embedding."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        start = time.perf_counter()
        embedding = encoder(pixels)
        seconds = time.perf_counter() - start
    return seconds, embedding.float()


def set_attention(encoder: torch.nn.Module, fast: bool) -> None:
    """Put the fast (True) or the stock (False) attention into `encoder`'s blocks, in place."""
    if fast:
        install_fast_attention(encoder)
    else:
        uninstall_fast_attention(encoder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per variant, median reported (min 3)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT,
                        help=f"where the random vit_b file is kept (default {CHECKPOINT})")
    parser.add_argument("--smoke", action="store_true",
                        help=f"use the tests' small SAM ({TINY_SAM.relative_to(ROOT)}) instead: checks the script only")
    args = parser.parse_args(argv)
    runs = max(3, args.runs)
    torch.set_num_threads(args.threads)

    sam = load_stock_sam(TINY_SAM if args.smoke else random_vit_b_checkpoint(args.checkpoint))
    size = sam.image_encoder.img_size
    image = torch.randint(0, 256, (1, 3, size, size), generator=torch.Generator().manual_seed(0)).float()
    pixels = sam.preprocess(image)

    bf16_ok = bf16_supported("cpu")
    variants = [("stock attention fp32", False, False), ("fast attention fp32", True, False)]
    if bf16_ok:
        variants.append(("fast attention bf16", True, True))
    # Rounds interleave the variants so that load from other processes hits all of them alike.
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    embeddings: dict[str, torch.Tensor] = {}
    for round_index in range(runs + 1):  # round 0 warms up and is not counted
        for name, fast, bf16 in variants:
            set_attention(sam.image_encoder, fast)
            seconds, embeddings[name] = encode(sam.image_encoder, pixels, bf16)
            if round_index:
                times[name].append(seconds)
    rows = [{"variant": name, "times_s": times[name]} for name, _, _ in variants]
    stock_times = times["stock attention fp32"]
    stock_embedding, fast_embedding = embeddings["stock attention fp32"], embeddings["fast attention fp32"]
    bf16_embedding = embeddings.get("fast attention bf16")

    stock_median = statistics.median(stock_times)
    for row in rows:
        row["median_s"] = statistics.median(row["times_s"])
        row["min_s"] = min(row["times_s"])
        row["speedup_vs_stock"] = stock_median / row["median_s"]
    results = {
        "model": "tests' small SAM (random weights; --smoke)" if args.smoke else "vit_b (random weights, full size)",
        "input": f"1x3x{size}x{size}",
        "threads": args.threads,
        "runs": runs,
        "cpu": torch.cpu.get_capabilities().get("cpu_name", "?"),
        "torch": torch.__version__,
        "rows": rows,
        "bf16_supported": bf16_ok,
        "max_abs_diff_fast_vs_stock_fp32": (fast_embedding - stock_embedding).abs().max().item(),
        "mean_abs_diff_fp32_vs_bf16": (
            (bf16_embedding - fast_embedding).abs().mean().item() if bf16_embedding is not None else None),
        "mean_abs_embedding_fp32": fast_embedding.abs().mean().item(),
    }

    print(f"\nSAM {results['model']}, input {results['input']}, {args.threads} threads, "
          f"median of {runs} interleaved runs ({results['cpu']}, torch {results['torch']})")
    print(f"{'variant':<24}{'median s':>10}{'min s':>8}{'vs stock':>10}   all runs s")
    for row in rows:
        runs_text = " ".join(f"{t:.2f}" for t in row["times_s"])
        print(f"{row['variant']:<24}{row['median_s']:>10.2f}{row['min_s']:>8.2f}"
              f"{row['speedup_vs_stock']:>9.2f}x   {runs_text}")
    if not bf16_ok:
        print(f"{'fast attention bf16':<24}{'not supported on this CPU':>30}")
    print(f"max |fast - stock| (fp32 embedding):  {results['max_abs_diff_fast_vs_stock_fp32']:.2e}")
    if bf16_embedding is not None:
        print(f"mean |bf16 - fp32| (embedding):       {results['mean_abs_diff_fp32_vs_bf16']:.2e}"
              f"  (mean |fp32 embedding| = {results['mean_abs_embedding_fp32']:.3f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
