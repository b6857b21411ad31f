"""The lean API session with each SAM model, in one process: what a script calling `/explain` waits for.

A session is three `/explain` calls through the app's own handler (`Handlers.explain`, result dict only, glibc's allocator set as the app sets it,
`include_files=False`): (1) a new image with 3 labels, (2) the same image with 3 new labels, (3) another
new image with the first labels. Every model is full size with random weights (CLIP ViT-B/16 in the
OpenAI layout; SAM vit_b and SAM 2.1 hiera-tiny in their release formats), loaded through the app's
model store. Per repetition each SAM model runs one session on new images (the models alternate, so
host drift hits both alike); medians of `--reps`, and the ratio of each model's session to the first's.
The goal of issue 22: SAM 2.1 hiera-tiny's session at most half of vit_b's.

    .venv/bin/python benchmarks/bench_api_session.py [--reps 5] [--models vit_b,sam2.1_hiera_tiny] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks", ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

LABELS_A, LABELS_B = "rocket, smoke, sky", "tower, cloud, ground"


def sam_file(name: str, smoke: bool) -> Path:
    """A random checkpoint of SAM model `name` in its release format (written once, then reused)."""
    from checkpoints import SMALL_ARCH, write_random_sam2_checkpoint, write_random_sam_checkpoint

    if smoke:
        folder = Path(tempfile.gettempdir()) / "surgery-bench-smoke"
        if name.startswith("sam2"):
            return write_random_sam2_checkpoint(folder / "sam2_test.pt", "test")
        return write_random_sam_checkpoint(folder / "sam_small.pth", SMALL_ARCH)
    if name.startswith("sam2"):
        from pipeline_instrumentation import CACHE_DIR

        path = CACHE_DIR / f"{name}_random_seed0.pt"
        if not path.is_file():
            print(f"writing random {name} checkpoint to {path} …", flush=True)
            write_random_sam2_checkpoint(path, name)
        return path
    from pipeline_instrumentation import sam_checkpoint

    return sam_checkpoint(size=name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="vit_b,sam2.1_hiera_tiny")
    parser.add_argument("--smoke", action="store_true", help="once, on the small test layouts")
    args = parser.parse_args()

    import torch

    from surgery.memory import configure_server_allocator

    configure_server_allocator()  # as the app does at start-up
    from explorer.handlers import Handlers
    from explorer.model_store import ModelConfig, ModelStore
    from pipeline_instrumentation import clip_checkpoint, make_image

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    reps = 1 if args.smoke else args.reps
    clip_path = ROOT / "tests" / "data" / "parity" / "weights.safetensors" if args.smoke else clip_checkpoint()
    work = Path(tempfile.mkdtemp(prefix="api-session-"))
    sessions = {}
    for name in models:
        config = ModelConfig(clip_model="ViT-B/16", clip_checkpoint=clip_path, sam_model=name,
                             sam_checkpoint=sam_file(name, args.smoke), text_cache_dir=work / "text", device="cpu")
        store = ModelStore(config)
        store.start(wait=True)
        sessions[name] = Handlers(store, work / name)

    def session(handlers: Handlers, name: str, seed: int) -> tuple[float, list[float]]:
        first, second = (make_image(seed + k) for k in (0, 1))
        calls = [(first, LABELS_A), (first, LABELS_B), (second, LABELS_A)]
        steps = []
        for image, labels in calls:
            start = time.perf_counter()
            result, *_ = handlers.explain(image, labels, 0.0, "ViT-B/16", 512, "vocab", name, "fp32")
            steps.append(time.perf_counter() - start)
            assert result["sam_model"] and len(result["labels"]) == 3
        return sum(steps), steps

    for name, handlers in sessions.items():  # warm-up: label features, first-call costs
        session(handlers, name, 9000)
    totals: dict[str, list[float]] = {name: [] for name in models}
    steps: dict[str, list[list[float]]] = {name: [] for name in models}
    for rep in range(reps):
        for offset, (name, handlers) in enumerate(sessions.items()):
            total, parts = session(handlers, name, 100 * rep + 10 * offset)
            totals[name].append(total)
            steps[name].append(parts)
    print(f"/explain session (new image, same image new labels, new image), 3 labels, 512 px, "
          f"{args.threads} threads, medians of {reps}, load average {os.getloadavg()[0]:.1f}")
    print("| SAM model | session s | new image s | new labels s | another new image s | ratio to first |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(totals[models[0]])
    for name in models:
        median = statistics.median(totals[name])
        parts = [statistics.median(p[i] for p in steps[name]) for i in range(3)]
        print(f"| {name} | {median:.2f} | {parts[0]:.2f} | {parts[1]:.2f} | {parts[2]:.2f} | {median / base:.2f} |")
    import resource

    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    for handlers in sessions.values():
        handlers.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
