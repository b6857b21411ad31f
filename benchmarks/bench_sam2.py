"""Every SAM model on this CPU: image encoder, a new image to masks, a decode with new points.

For each of SAM vit_b / vit_l / vit_h and SAM 2.1 hiera tiny / small / base_plus / large, a full-size
random checkpoint in the model's real file format (SAM's state dict, SAM 2.1's `{"model": ...}`
release file) is written once to the temp dir (reused by later runs) and loaded through
`surgery.loading.load_segmenter`, as the app loads Meta's files; random weights cost the same time
as real ones. Per repetition a new image (one pixel changed, so the cache misses) is embedded and
then decoded for three labels' prompts, as a new image with 3 labels is; a decode with new points is
one `predict` on a cached embedding (a threshold move that changed the points). Medians of `--reps`
after one warm-up. `--smoke` runs the small test layouts in seconds to check the script.

    .venv/bin/python benchmarks/bench_sam2.py [--threads 2] [--reps 5] [--models vit_b,sam2.1_hiera_tiny]
        [--reps-for vit_h=3,sam2.1_hiera_large=3] [--allocator default|reuse] [--json out.json] [--smoke]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the engine, and tests/checkpoints.py

from checkpoints import SMALL_ARCH, write_random_sam2_checkpoint, write_random_sam_checkpoint  # noqa: E402

from surgery.hub.registry import SAM_CHECKPOINTS  # noqa: E402
from surgery.images import load_image  # noqa: E402
from surgery.loading import load_segmenter  # noqa: E402
from surgery.memory import reuse_freed_blocks  # noqa: E402
from surgery.sam.architecture import VIT_B_ARCH, VIT_H_ARCH, VIT_L_ARCH  # noqa: E402

BENCH_DIR = Path(tempfile.gettempdir()) / "surgery-bench"
SAM_ARCHS = {"vit_b": VIT_B_ARCH, "vit_l": VIT_L_ARCH, "vit_h": VIT_H_ARCH}
IMAGE = ROOT / "assets" / "rocket.jpg"  # 640×427, under the app's 1024 px working size
# Three labels' prompts (found points and a not-found one), in the image's pixels.
PROMPTS = [
    np.array([[320, 120, 1], [330, 200, 1], [100, 380, 0]]),
    np.array([[80, 60, 1], [560, 60, 1], [320, 300, 0]]),
    np.array([[500, 350, 1], [120, 100, 0]]),
]
NEW_POINTS = np.array([[300, 150, 1], [340, 260, 1], [60, 400, 0]])


def checkpoint_for(name: str, smoke: bool) -> Path:
    """The random checkpoint of `name` (the test layouts with --smoke), written on first use only."""
    suffix = "smoke" if smoke else "random_seed0"
    if name in SAM_ARCHS:
        path = BENCH_DIR / f"sam_{name}_{suffix}.pth"
        if name == "vit_b" and not smoke:
            path = BENCH_DIR / "sam_vit_b_random_seed0.pth"  # bench_sam_encoder.py's file
        write = lambda target: write_random_sam_checkpoint(target, SMALL_ARCH if smoke else SAM_ARCHS[name])
    else:
        path = BENCH_DIR / f"{name}_{suffix}.pt"
        write = lambda target: write_random_sam2_checkpoint(target, "test" if smoke else name)
    if not path.is_file():
        print(f"writing random {name} checkpoint to {path} …", flush=True)
        partial = path.with_name(path.stem + ".partial" + path.suffix)
        write(partial)
        partial.replace(path)
    return path


def new_image(base: np.ndarray, index: int) -> np.ndarray:
    """`base` with one pixel changed: a different image to the embedding cache, the same work."""
    image = base.copy()
    image[0, 0, 0] = (int(image[0, 0, 0]) + 1 + index) % 256
    return image


def measure(name: str, smoke: bool, reps: int) -> dict:
    path = checkpoint_for(name, smoke)
    load_before = os.getloadavg()[0]  # other processes on these cores slow every figure down
    start = time.perf_counter()
    segmenter = load_segmenter(name, checkpoint=path, device="cpu", precision="fp32")
    load_seconds = time.perf_counter() - start
    base = load_image(IMAGE)
    encode, to_masks, decode, encode_cpu, faults = [], [], [], [], []
    for rep in range(reps + 1):  # the first is a warm-up
        image = new_image(base, rep)
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        embedding = segmenter.embed(image)
        encoded = time.perf_counter()
        after = resource.getrusage(resource.RUSAGE_SELF)
        for points in PROMPTS:
            segmenter.predict(embedding, points)
        done = time.perf_counter()
        segmenter.predict(embedding, NEW_POINTS)
        decoded = time.perf_counter()
        if rep:
            encode.append(encoded - start)
            to_masks.append(done - start)
            decode.append(decoded - done)
            # CPU seconds (all threads, user + system) and fresh pages: steadier than wall time on shared cores.
            encode_cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            faults.append(after.ru_minflt - before.ru_minflt)
    result = {
        "model": name, "family": segmenter.family, "reps": reps, "load_s": round(load_seconds, 2),
        "encoder_s": statistics.median(encode), "new_image_to_masks_s": statistics.median(to_masks),
        "decode_new_points_s": statistics.median(decode),
        "encoder_cpu_s": statistics.median(encode_cpu), "encoder_page_faults": int(statistics.median(faults)),
        "encoder_runs_s": [round(s, 3) for s in encode],
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    del segmenter, embedding
    gc.collect()
    return result


def table(results: list[dict], threads: int, allocator: str) -> str:
    rows = ["| model | encoder (s) | new image → masks, 3 labels (s) | decode, new points (s) | "
            "encoder CPU (s) | encoder page faults | reps |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(f"| {r['model']} | {r['encoder_s']:.2f} | {r['new_image_to_masks_s']:.2f} | "
                    f"{r['decode_new_points_s']:.3f} | {r['encoder_cpu_s']:.2f} | {r['encoder_page_faults']} | "
                    f"{r['reps']} |")
    return "\n".join(rows) + f"\n\n(fp32, {threads} torch threads, {allocator} allocator, torch {torch.__version__})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per model (default 5)")
    parser.add_argument("--reps-for", default="", metavar="NAME=N,...",
                        help="fewer (or more) repetitions for some models, e.g. vit_h=3")
    parser.add_argument("--models", default=",".join(SAM_CHECKPOINTS),
                        help=f"comma-separated, from {', '.join(SAM_CHECKPOINTS)} (default all)")
    parser.add_argument("--allocator", choices=("default", "reuse"), default="default",
                        help="default: glibc's own policy (what the app and CLI run with: blocks over 32 MB are "
                             "fresh pages each time); reuse: every large block reuses freed heap memory "
                             "(an experiment, see reuse_freed_blocks)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="the small test layouts: checks the script only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.allocator == "reuse" and not reuse_freed_blocks():
        parser.error("--allocator reuse needs glibc's mallopt")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in SAM_CHECKPOINTS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(SAM_CHECKPOINTS)}")
    reps_for = dict(item.split("=") for item in args.reps_for.split(",") if item)
    results = []
    for name in models:
        reps = 1 if args.smoke else int(reps_for.get(name, args.reps))
        result = measure(name, args.smoke, reps)
        print(json.dumps(result), flush=True)
        results.append(result)
    print()
    print(table(results, args.threads, args.allocator))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "allocator": args.allocator,
                                         "torch": torch.__version__, "smoke": args.smoke, "results": results},
                                        indent=2))


if __name__ == "__main__":
    main()
