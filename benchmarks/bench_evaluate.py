"""What `evaluate` costs per image: one method against all six, under the standard voc21 protocol.

On full-size random ViT-B/16 weights (open_clip's ViT-B-16 architecture in the OpenAI layout, random init,
written once to a safetensors file by the pipeline benchmark's instrumentation and loaded through
`load_clip`), at VOC image sizes (500x375: resized to 448x336, 2 x 3 windows of 224), it times the
per-image work of `evaluate` (`predict_methods` and the areas against a ground truth: every window
encoded once for all methods, merged, resized, classified) over `--images` new images, `--reps` times:

- `one`: sclip alone;
- `six`: clip, surgery, maskclip, sclip, clearclip, naclip.

Prints images per minute (medians of the repetitions) and the ratio of the times, six / one (goal: at
most 2). The query features are computed before timing (they are kept on disk after the first run).
`--smoke` runs once on the tiny checkpoint.

    .venv/bin/python benchmarks/bench_evaluate.py [--reps 3] [--images 3] [--threads 2] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

SIX = ("clip", "surgery", "maskclip", "sclip", "clearclip", "naclip")
ONE = ("sclip",)
VOC_SIZE = (500, 375)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--images", type=int, default=3, help="images per repetition")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="once, on the tiny checkpoint (a quick check)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from pipeline_instrumentation import TINY_CLIP, clip_checkpoint, make_image
    from surgery.method.table import IMAGENET_TEMPLATES
    from surgery.evaluate.classes import packaged_classes
    from surgery.evaluate.datasets import DATASETS
    from surgery.evaluate.features import WindowEncoder
    from surgery.evaluate.metrics import image_areas
    from surgery.evaluate.predict import predict_methods
    from surgery.evaluate.protocol import Protocol
    from surgery.loading import load_clip

    torch.set_num_threads(args.threads)
    reps, count = (1, 1) if args.smoke else (args.reps, args.images)
    path = TINY_CLIP if args.smoke else clip_checkpoint()
    explainer = load_clip(checkpoint=path, device=args.device)
    spec = DATASETS["voc21"]
    classes = packaged_classes(spec.classes_file)
    text = explainer.text_features(list(classes.queries), IMAGENET_TEMPLATES)
    protocol = Protocol(spec.short_side, logit_scale=spec.logit_scale, prob_threshold=spec.prob_threshold,
                        area_threshold=spec.area_threshold)
    encoders = {"one": WindowEncoder(explainer.model.visual, ONE), "six": WindowEncoder(explainer.model.visual, SIX)}
    rng = np.random.default_rng(0)

    def image(seed: int) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(make_image(seed).convert("RGB").resize(VOC_SIZE)))

    def truth(rgb: np.ndarray) -> np.ndarray:
        return rng.integers(0, len(classes), size=rgb.shape[:2]).astype(np.uint8)

    def run(encoder: WindowEncoder, images: list[np.ndarray]) -> float:
        start = time.perf_counter()
        for rgb in images:
            label = truth(rgb)
            for _, prediction, _ in predict_methods(encoder, text, rgb, classes, protocol):
                image_areas(prediction, label, len(classes))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(encoders["six"], [image(999)])  # warm-up (first-call allocations)
    seconds: dict[str, list[float]] = {"one": [], "six": []}
    for rep in range(reps):
        for name in ("one", "six"):
            images = [image(100 * rep + 10 * (name == "six") + i) for i in range(count)]
            seconds[name].append(run(encoders[name], images))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    per_minute = {name: 60 * count / median[name] for name in median}
    print(f"ViT-B/16 ({path.name}) on {args.device}, {args.threads} threads, voc21 protocol at {VOC_SIZE[0]}x"
          f"{VOC_SIZE[1]} (6 windows), {count} images per run, medians of {reps}")
    print("| methods | seconds per image | images per minute |\n|---|---|---|")
    print(f"| one (sclip) | {median['one'] / count:.3f} | {per_minute['one']:.1f} |")
    print(f"| six ({', '.join(SIX)}) | {median['six'] / count:.3f} | {per_minute['six']:.1f} |")
    ratio = median["six"] / median["one"]
    print(f"six / one = {ratio:.2f} (goal <= 2: {'met' if ratio <= 2 else 'missed'})")


if __name__ == "__main__":
    main()
