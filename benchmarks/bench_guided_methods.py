"""What SC-CLIP, ResCLIP and ProxyCLIP cost per image, beside NACLIP (a last-block-only method).

Times each step of `surgery.clip.guided_methods` at one resolution (median of `--reps`, after one
untimed warm-up), on the tiny test checkpoints (default) or, with `--full`, on full-size random
weights: open_clip `ViT-B-16` and a SAM vit_b image encoder (random weights cost what real ones
do). Label features are random unit vectors (text encoding is not what this measures).

- `trunk`: `record_trunk` with what the three methods read (ResCLIP's attention blocks, SC-CLIP's
  block outputs), as the explainer records it once for all of them (`dense.trunk_for`);
- `naclip`: NACLIP's last block on that trunk, for scale;
- `scclip`, `resclip` (K labels), `proxyclip`: each method after the trunk, through the engine's
  method table (`dense.method_features`);
- `sam proxy (stock|fast)`: `proxy_embedding`, SAM's encoder on the CLIP input stretched to 1024,
  with segment_anything's attention and with the project's fast attention (which the app installs).

    .venv/bin/python benchmarks/bench_guided_methods.py [--full] [--resolution 448] [--labels 3] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size random ViT-B/16 and SAM vit_b")
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--labels", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import copy

    import torch

    from surgery.clip import dense
    from surgery.clip import guided_methods as gm
    from surgery.clip.preprocess import clip_input
    from surgery.images import load_image
    from surgery.sam.architecture import VIT_B_ARCH, SamArchitecture, build_sam, make_sam
    from surgery.sam.fast_encoder import install_fast_attention

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.full:
        import open_clip

        visual = open_clip.create_model("ViT-B-16").visual.eval().requires_grad_(False)
        stock = make_sam(VIT_B_ARCH).image_encoder.eval().requires_grad_(False)
        name = "random ViT-B/16 + SAM vit_b"
    else:
        from safetensors.torch import load_file

        from surgery.loading import load_clip

        visual = load_clip(checkpoint=ROOT / "tests/data/parity/weights.safetensors", device="cpu").model.visual
        tiny = SamArchitecture(encoder_embed_dim=96, encoder_depth=3, encoder_num_heads=3,
                               encoder_global_attn_indexes=(1,), window_size=14)  # tests/data/methods2/README.md
        state = make_sam(tiny).state_dict()  # a full SAM around the stored encoder, as build_sam wants one
        state.update(load_file(ROOT / "tests/data/methods2/sam_image_encoder.safetensors"))
        stock = build_sam(state, fast_attention=False).image_encoder
        name = "tiny test checkpoints"
    fast = copy.deepcopy(stock)
    install_fast_attention(fast)

    image = load_image(ROOT / "tests/data/parity/rocket.png")
    pixels = clip_input(image, args.resolution)
    dimension = visual.proj.shape[1]
    labels = torch.nn.functional.normalize(torch.randn(args.labels, dimension), dim=-1)
    methods = ["naclip", "scclip", "resclip", "proxyclip"]
    grid = args.resolution // visual.conv1.kernel_size[0]
    record = dense.trunk_for(visual, pixels, methods)
    inputs = dense.DenseInputs(visual, record, pixels, label_features=labels, proxy=gm.proxy_embedding(fast, pixels))
    steps = {
        "trunk": lambda: dense.trunk_for(visual, pixels, methods),
        **{(f"{m} ({args.labels} labels)" if m == "resclip" else m): (lambda m=m: dense.method_features(inputs, m))
           for m in methods},
        "sam proxy (stock)": lambda: gm.proxy_embedding(stock, pixels),
        "sam proxy (fast)": lambda: gm.proxy_embedding(fast, pixels),
    }
    medians = {}
    for step, run in steps.items():
        run()  # warm-up
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        medians[step] = statistics.median(times)
    print(f"{name}, {args.resolution} px (grid {grid}), {args.threads} threads, medians of {args.reps}")
    print("| step | median s |\n|---|---|")
    for step, seconds in medians.items():
        print(f"| {step} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
