"""What comparing methods costs: CLIP + CLIP Surgery alone against all six earlier methods, and each
newer method (SC-CLIP, ResCLIP, ProxyCLIP) added on its own, in one process.

On full-size random ViT-B/16 weights (OpenAI layout, written once by the pipeline benchmark's
instrumentation) it times, per repetition and each on a new image (nothing cached):

- `two`: `compute_maps` with methods clip,surgery (the default);
- `six`: `compute_maps` with all six methods;
- the image side alone of each (the maps' `clip_image` + `dense_image` timings);
- the label text for the second template set (OpenAI's 80 ImageNet templates) against CLIP Surgery's 85,
  for new labels;
- `+scclip`, `+resclip`, `+proxyclip`: the six plus that one method, on a new image, with SAM vit_b
  (random, full size) as ProxyCLIP's proxy: its own encoder pass of the 1024 x 1024 CLIP crop included;
  then the same image with new labels (`relabel`), where the trunk's and the proxy's work is cached
  (ResCLIP's map depends on the labels, so it runs its block again).

Prints medians and the ratio six / two. Goal: at most 1.5x. `--smoke` runs once on the tiny checkpoints.

    .venv/bin/python benchmarks/bench_methods.py [--reps 5] [--resolution 512] [--smoke]
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

ALL = ("clip", "surgery", "maskclip", "sclip", "clearclip", "naclip")
NEWER = ("scclip", "resclip", "proxyclip")
LABELS = "rocket, smoke, sky"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="once, on the tiny checkpoint (a quick check)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from pipeline_instrumentation import clip_checkpoint, make_image, sam_checkpoint
    from surgery.method.table import IMAGENET_TEMPLATES, SURGERY_TEMPLATES
    from surgery.images import load_image
    from surgery.loading import load_clip, load_segmenter
    from surgery.method.labels import parse_labels
    from surgery.method.options import MapOptions

    torch.set_num_threads(args.threads)
    reps = 1 if args.smoke else args.reps
    path = ROOT / "tests" / "data" / "parity" / "weights.safetensors" if args.smoke else clip_checkpoint()
    explainer = load_clip(checkpoint=path)
    sam_path = ROOT / "tests" / "data" / "sam_tiny.safetensors" if args.smoke else sam_checkpoint()
    proxy = load_segmenter(checkpoint=sam_path, device="cpu").proxy
    labels = parse_labels(LABELS).labels
    explainer.warm_vocabulary()
    explainer.text_features([label.text for label in labels])  # text is not what this measures
    explainer.text_features([label.text for label in labels], IMAGENET_TEMPLATES)

    def image(seed: int) -> np.ndarray:
        return np.ascontiguousarray(load_image(make_image(1000 + seed)))

    times: dict[str, list[float]] = {"two": [], "six": [], "two_image": [], "six_image": []}
    for rep in range(reps):
        for name, methods, seed in (("two", ALL[:2], 2 * rep), ("six", ALL, 2 * rep + 1)):
            start = time.perf_counter()
            maps = explainer.compute_maps(image(seed), labels,
                                          MapOptions(args.resolution, "vocab", methods=methods))
            times[name].append(time.perf_counter() - start)
            times[f"{name}_image"].append(maps.timings["clip_image"] + maps.timings.get("dense_image", 0.0))

    newer: dict[str, list[float]] = {f"+{m}": [] for m in NEWER} | {f"+{m} relabel": [] for m in NEWER}
    other_labels = parse_labels("tower, night, light").labels
    explainer.text_features([label.text for label in other_labels], IMAGENET_TEMPLATES)
    for rep in range(reps):
        for offset, method in enumerate(NEWER):
            picture = image(100 + 10 * rep + offset)
            options = MapOptions(args.resolution, "vocab", methods=ALL + (method,))
            explainer.compute_maps(picture, labels, MapOptions(args.resolution, "vocab", methods=ALL))  # the six
            start = time.perf_counter()
            explainer.compute_maps(picture, labels, options, proxy=proxy)
            newer[f"+{method}"].append(time.perf_counter() - start)
            start = time.perf_counter()
            explainer.compute_maps(picture, other_labels, options, proxy=proxy)
            newer[f"+{method} relabel"].append(time.perf_counter() - start)

    text: dict[str, list[float]] = {SURGERY_TEMPLATES: [], IMAGENET_TEMPLATES: []}
    for rep in range(reps):
        for templates in text:
            new_labels = [f"object number {rep} {templates} {i}" for i in range(3)]  # never cached
            start = time.perf_counter()
            explainer.text_features(new_labels, templates)
            text[templates].append(time.perf_counter() - start)

    median = {name: statistics.median(values) for name, values in {**times, **text, **newer}.items()}
    native = 224 if explainer.patch_size == 16 else None
    print(f"ViT ({path.name}), {args.resolution} px, {len(labels)} labels, {args.threads} threads, "
          f"medians of {reps} (native grid {'yes' if args.resolution == native else 'no'}: "
          f"{'one trunk for all' if args.resolution == native else 'a second, DINO-resized trunk'})")
    print("| what | median s |\n|---|---|")
    for name in ("two", "six", "two_image", "six_image"):
        print(f"| {name.replace('_', ' ')} | {median[name]:.3f} |")
    for name in newer:
        what = (f"{name.split()[0]} on the same image with 3 other labels" if name.endswith("relabel") else
                f"{name}: that method added to the six (already computed) on a new image")
        print(f"| {what} | {median[name]:.3f} |")
    print(f"| text, 3 new labels, CLIP Surgery's 85 templates | {median[SURGERY_TEMPLATES]:.3f} |")
    print(f"| text, 3 new labels, ImageNet's 80 templates | {median[IMAGENET_TEMPLATES]:.3f} |")
    ratio = median["six"] / median["two"]
    print(f"six / two = {ratio:.2f} (goal ≤ 1.5: {'met' if ratio <= 1.5 else 'missed'}); "
          f"image side alone {median['six_image'] / median['two_image']:.2f}")


if __name__ == "__main__":
    main()
