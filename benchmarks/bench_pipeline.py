"""End-to-end latency of the app's pipeline (CLIP Surgery maps + SAM masks) vs a straightforward one.

Real weights are never downloaded here. Once, into a cache folder
(~/.cache/clip-surgery-bench, or $CLIP_SURGERY_BENCH_CACHE), this writes a
full-size random ViT-B/16 CLIP in the OpenAI layout (.safetensors, built with
open_clip's CLIP class) and a full-size random SAM vit_b (.pth, via
tests/checkpoints.py). Both are loaded the app's way (`surgery.loading`
through `explorer.model_store.ModelStore`); random weights cost exactly the
time real ones do.

Two modes, each in its own subprocess so their memory does not mix:

* product: the app's own handlers, `explorer.handlers.Handlers(ModelStore(...))`
  after `explorer.gradio_patches.apply()`, as `explorer.main` sets them up.
  `pre_encode`, `run` (a generator: first yield = heatmaps, second = masks) and
  `rethreshold` are called as Gradio would call them, plus
  `explorer.session.rerender`. Gradio's PNG postprocessing of the galleries is
  done too and timed as its own stage (`ui_png`).
* baseline (`pipeline_baseline.py`): what a straightforward implementation does
  per request: a plain CLIP forward and a separate dual-path Surgery forward,
  the full 77-token text encoding of all 85 prompts for every label and for the
  59-class background vocabulary (and the empty prompt), nothing cached, stock
  `segment_anything` attention and `SamPredictor.set_image` on every request
  (a threshold move reruns everything). Thresholding, rendering and output
  files are the product's own (its `Handlers.run` on the baseline models).

Stage times are the engine's own (`MapsResult.timings`, `Explanation.timings`)
and model calls are counted from its `surgery.calls` log; see
`pipeline_instrumentation.py`. Nothing of the engine or the app is patched.

Scenarios (new images are asset photos with fresh noise, so their hashes are
new; new labels are never seen before in that process):
  (a) new image, 3 new labels, 512 px, SAM on: time to first heatmaps and to
      masks, both as "upload pre-encode, then Run" (Run-only times reported)
      and "Run directly" (cold)
  (b) same image, 3 other new labels
  (c) threshold move: `session.rerender`, and the whole rethreshold handler
  (d) new image, the labels of (a)
"first heatmaps" = Run pressed -> first yield's values computed (maps,
threshold, points, heatmap/points/histogram rendering), without Gradio's PNG
encoding; "masks" = Run pressed -> second yield's values computed (includes the
first yield's PNG encoding, as in the app, not the second's).

    .venv/bin/python benchmarks/bench_pipeline.py [--reps 5] [--json out.json] [--threads 2]
        [--precision fp32|bf16] [--skip-baseline] [--baseline-reps 1] [--baseline-text-sample 0]
        [--long-side 0] [--cprofile out.txt] [--report RUN_FOLDER] [--smoke]

The baseline is slow on 2 cores (its text encoding alone is 6-12 minutes per
request: 63 texts x 85 prompts x 77 tokens), so it runs `--baseline-reps`
repetitions (default 1) on the same images and labels as the product's first
repetition. `--baseline-text-sample K` encodes only K of the 59 vocabulary
classes per baseline request and adds the measured mean per class for the rest
(every class is the same 85x77 batch, so the cost is linear); the table says
so when it is used. Worker results are kept in <cache>/runs/<time>/ and
`--report` prints the table again from such a folder.

`--smoke` runs the whole flow (both modes, one repetition) on the tests' small
random checkpoints (tests/data) in under a minute (~40 s on 2 busy cores) and checks what each
scenario recorded; its figures say nothing about performance.

The machine this runs on may be shared: every record carries the 1-minute load
average, and the table shows the product's minimum next to its median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_instrumentation import (
    CACHE_DIR, ROOT, GradioPostprocess, LogWatch, Meter, ModelCallCounter, full_request_stages, make_image, memory,
    prepared_checkpoints, profile, rerender_stages, rethreshold_stages, rss_now_mb, smoke_checkpoints, strip,
    thresholds_for,
)
from pipeline_report import check_smoke, print_table, summarise, table_title

RESOLUTION = 512
REDUNDANCY = "vocab"
BACKBONE = "ViT-B/16"
LOAD_TIMEOUT_S = 1800

# Nouns for labels; any in the background vocabulary are dropped (those are warm in the product).
WORDS = """apple banana orange lemon grape strawberry pizza sandwich cake donut carrot broccoli egg bread
cheese umbrella backpack suitcase wallet watch ring necklace hat shoe boot glove scarf jacket shirt
dress tie helmet mask glasses camera phone laptop tablet clock lamp candle mirror vase bowl spoon
fork knife kettle teapot bucket basket box barrel ladder hammer shovel rope chain wheel tire engine
rocket satellite planet moon sun star cloud rainbow volcano island beach desert forest river lake
bridge tower castle church temple statue fountain flag kite balloon guitar piano violin drum trumpet
ball bat racket skateboard surfboard tent anchor whale dolphin shark octopus crab turtle frog snake
lizard spider butterfly bee ant owl eagle parrot penguin duck chicken pig goat deer rabbit squirrel
fox wolf bear lion tiger zebra giraffe elephant monkey camel kangaroo leaf cactus mushroom pumpkin
coffee tea wine beer smoke fire ice sand spacesuit astronaut whiskers saucer tripod coat""".split()  # noqa: SIM905


def background_vocabulary() -> list[str]:
    """The engine's 59 background classes, read from its data file as `surgery.method.prompts` does.

    Read here without importing the engine: the parent process stays free of torch, so the workers it
    starts do not inherit a large peak RSS (ru_maxrss survives fork and exec)."""
    text = (ROOT / "surgery" / "method" / "background_vocabulary.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def make_plan(reps: int, seed: int) -> dict:
    """Images (asset + noise seed) and label texts for every repetition (rep -1: the untimed warm-up),
    shared by both modes."""
    import random

    vocabulary = {w.lower() for w in background_vocabulary()}
    words = [w for w in dict.fromkeys(WORDS) if w not in vocabulary]
    random.Random(seed).shuffle(words)
    need = (reps + 1) * 9
    if need > len(words):
        raise SystemExit(f"--reps {reps} needs {need} distinct label words; only {len(words)} available")
    pool = iter(words)

    def labels() -> str:
        return ", ".join(next(pool) for _ in range(3))

    plan = [{"rep": rep, "image_a": 1000 + rep + 1, "image_d": 3000 + rep + 1, "image_cold": 2000 + rep + 1,
             "labels_a": labels(), "labels_b": labels(), "labels_cold": labels()} for rep in range(-1, reps)]
    return {"seed": seed, "reps": plan}


def worker_setup(args: argparse.Namespace, tmp: Path) -> float:
    """Threads, Gradio's environment and patches, as `explorer.main` has them; returns the import seconds."""
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp / "gradio")
    started = time.perf_counter()
    from explorer import gradio_patches, handlers  # noqa: F401 (imports gradio and the engine)

    gradio_patches.apply()
    return time.perf_counter() - started


def product_worker(args: argparse.Namespace, plan: dict, clip_path: Path, sam_path: Path, tmp: Path) -> dict:
    """The app's handlers on a real `ModelStore`, through every scenario of every repetition."""
    memory_log = {"start": memory()}
    import_s = worker_setup(args, tmp)
    from explorer import session as S
    from explorer.handlers import Handlers
    from explorer.model_store import ModelConfig, ModelStore

    memory_log["after_imports"] = memory()
    calls = ModelCallCounter.install()
    ready = LogWatch("explorer.model_store", "default models ")
    started = time.perf_counter()
    config = ModelConfig(clip_model=BACKBONE, clip_checkpoint=clip_path, sam_model=args.sam_model,
                         sam_checkpoint=sam_path, text_cache_dir=tmp / "text-cache",  # as explorer.main: on disk
                         device=args.device)
    store = ModelStore(config)
    if args.precision == config.default_precision():
        store.start()  # what explorer.main does: both models and the vocabulary, in the background
        store.clip()
        store.sam(None, "fp32")
        message = ready.wait(LOAD_TIMEOUT_S)
        if "loaded and ready" not in message:
            raise SystemExit(f"the model store did not get ready: {message}")
    else:  # start() would also load a SAM in the device's default precision nobody uses in this run
        store.clip().warm_vocabulary()
        store.sam(None, args.precision)
    load_s = time.perf_counter() - started
    memory_log["after_load"] = memory()
    print(f"  product: models loaded in {load_s:.1f} s, rss {rss_now_mb():.0f} MB", file=sys.stderr, flush=True)
    handlers = Handlers(store, tmp / "outputs")
    meter = Meter(GradioPostprocess(), calls)

    def run_args(image, labels: str, threshold: float = 0.0) -> tuple:
        return (image, labels, threshold, BACKBONE, RESOLUTION, REDUNDANCY, args.sam_model, args.precision)

    results: dict[str, list] = defaultdict(list)
    warmup: dict = {}
    for item in plan["reps"]:
        rep = item["rep"]

        def record(key: str, value: dict, rep: int = rep) -> None:
            if rep < 0:
                warmup[key] = strip(value)
            else:
                results[key].append(strip(value))

        image_a = make_image(item["image_a"], args.long_side)
        # (a) upload -> pre-encode, then Run
        record("pre_encode", meter.call(handlers.pre_encode, (image_a, BACKBONE, RESOLUTION, args.sam_model,
                                                              args.precision)))
        run_a = meter.run(handlers.run, run_args(image_a, item["labels_a"]))
        record("a_pre", run_a)
        # (b) same image, other labels
        run_b = meter.run(handlers.run, run_args(image_a, item["labels_b"]))
        record("b", run_b)
        # (c) threshold moves on (b)'s state: alternately rerender only and the whole handler
        state = run_b["state"]
        segmenter = store.sam(*state.sam_key)
        for index, threshold in enumerate(thresholds_for(state, 4)):
            if index % 2 == 0:
                record("c_rerender", meter.call(S.rerender, (state, threshold, segmenter), rerender_stages))
            else:
                record("c_handler", meter.call(handlers.rethreshold, (state, threshold), rethreshold_stages,
                                               postprocess=True))
        # (d) new image, (a)'s labels, Run directly (upload + immediate Run queue the same work)
        record("d", meter.run(handlers.run, run_args(make_image(item["image_d"], args.long_side), item["labels_a"])))
        # (a) cold: new image, new labels, Run directly without the upload pre-encode
        record("a_cold", meter.run(handlers.run, run_args(make_image(item["image_cold"], args.long_side),
                                                          item["labels_cold"])))
        if rep < 0:
            memory_log["after_warmup"] = memory()
        print(f"  product rep {rep}: a_pre {run_a['first_s']:.2f}/{run_a['masks_s']:.2f} s, "
              f"b {run_b['first_s']:.2f}/{run_b['masks_s']:.2f} s, load {os.getloadavg()[0]:.1f}",
              file=sys.stderr, flush=True)

    profile_text = None
    if args.cprofile:  # one extra cold Run, new image and labels
        profile_text = profile(lambda: list(handlers.run(*run_args(make_image(9999, args.long_side),
                                                                   "quill, anvil, lantern"))))
    memory_log["end"] = memory()
    gpu_peak_mb = None
    if args.device.startswith("cuda"):
        import torch

        gpu_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        print(f"  product: peak GPU memory {gpu_peak_mb:.0f} MB (allocated by torch)", file=sys.stderr, flush=True)
    store.close()
    return {"mode": "product", "import_s": import_s, "load_s": load_s, "memory": memory_log,
            "results": dict(results), "warmup": warmup, "cprofile": profile_text, "gpu_peak_mb": gpu_peak_mb,
            "device": args.device, "sam_model": args.sam_model}


def baseline_worker(args: argparse.Namespace, plan: dict, clip_path: Path, sam_path: Path, tmp: Path) -> dict:
    """The baseline through scenarios (a), (b), (c) and (d) of the first `--baseline-reps` repetitions."""
    memory_log = {"start": memory()}
    worker_setup(args, tmp)
    from pipeline_baseline import BaselineApp

    from explorer.model_store import ModelConfig

    calls = ModelCallCounter.install()
    started = time.perf_counter()
    config = ModelConfig(clip_model=BACKBONE, clip_checkpoint=clip_path, sam_model=args.sam_model,
                         sam_checkpoint=sam_path, device=args.device)
    baseline = BaselineApp(config, tmp / "outputs", resolution=RESOLUTION, redundancy=REDUNDANCY,
                           precision=args.precision, text_sample=args.baseline_text_sample)
    baseline.load()
    load_s = time.perf_counter() - started
    memory_log["after_load"] = memory()
    meter = Meter(GradioPostprocess(), calls, baseline.extrapolated_s)

    def partial(results: dict) -> dict:
        return {"mode": "baseline", "load_s": load_s, "memory": memory_log, "results": dict(results),
                "text_sample": args.baseline_text_sample}

    results: dict[str, list] = defaultdict(list)
    for item in plan["reps"][1: 1 + args.baseline_reps]:  # no warm-up: nothing in it is reused anyway
        image_a = make_image(item["image_a"], args.long_side)
        run_a = meter.run(baseline.run, (image_a, item["labels_a"], 0.0))
        results["a"].append(strip(run_a))
        print(f"  baseline rep {item['rep']}: a {run_a['first_s']:.1f}/{run_a['masks_s']:.1f} s, "
              f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        run_b = meter.run(baseline.run, (image_a, item["labels_b"], 0.0))
        results["b"].append(strip(run_b))
        threshold = thresholds_for(run_b["state"], 4)[1]
        results["c_handler"].append(strip(meter.call(baseline.rethreshold, (run_b["state"], threshold),
                                                     full_request_stages, postprocess=True)))
        image_d = make_image(item["image_d"], args.long_side)
        results["d"].append(strip(meter.run(baseline.run, (image_d, item["labels_a"], 0.0))))
        print(f"  baseline rep {item['rep']} done, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        if args.worker_out:  # partial results, in case the run is cut short
            args.worker_out.write_text(json.dumps({**partial(results), "partial": True}, default=str))
    memory_log["end"] = memory()
    baseline.close()
    return partial(results)


def run_worker(mode: str, args: argparse.Namespace, plan_path: Path, clip_path: Path, sam_path: Path,
               folder: Path) -> dict:
    """Run one mode in a fresh Python process; its results (JSON) are kept in `folder`."""
    out = folder / f"{mode}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--plan", str(plan_path),
               "--worker-out", str(out), "--clip", str(clip_path), "--sam", str(sam_path),
               "--threads", str(args.threads), "--precision", args.precision, "--reps", str(args.reps),
               "--device", args.device, "--sam-model", args.sam_model,
               "--baseline-reps", str(args.baseline_reps), "--long-side", str(args.long_side),
               "--baseline-text-sample", str(args.baseline_text_sample)]
    if args.cprofile and mode == "product":
        command += ["--cprofile", str(args.cprofile)]
    print(f"running {mode} mode in a subprocess …", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(out.read_text())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="product repetitions per scenario (5 for figures)")
    parser.add_argument("--baseline-reps", type=int, default=1, help="baseline repetitions (slow; default 1)")
    parser.add_argument("--json", type=Path, help="also write all results here")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="image encoder precision")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where the models run")
    parser.add_argument("--sam-model", choices=("vit_b", "vit_l", "vit_h"), default="vit_b",
                        help="SAM size (full-size random weights; vit_h writes a 2.5 GB checkpoint once)")
    parser.add_argument("--skip-baseline", action="store_true", help="product mode only")
    parser.add_argument("--long-side", type=int, default=0, help="resize test photos to this long side (0: as is)")
    parser.add_argument("--cprofile", type=Path, help="write a cProfile of one extra cold product Run here")
    parser.add_argument("--baseline-text-sample", type=int, default=0,
                        help="baseline: encode only this many of the 59 vocabulary classes per request and add the "
                             "measured mean time for the rest (0: encode all; the default)")
    parser.add_argument("--report", type=Path, help="only print the table from a kept run folder")
    parser.add_argument("--smoke", action="store_true",
                        help="one repetition of both modes on the tests' small checkpoints, checked (~40 s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("product", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--clip", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sam", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        plan = json.loads(args.plan.read_text())
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-{args.worker}-"))
        worker = product_worker if args.worker == "product" else baseline_worker
        try:
            result = worker(args, plan, args.clip, args.sam, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result.update(threads=args.threads, precision=args.precision, load1_end=os.getloadavg()[0])
        args.worker_out.write_text(json.dumps(result, indent=1, default=str))
        return 0

    if args.report:
        loaded = {mode: json.loads((args.report / f"{mode}.json").read_text())
                  for mode in ("product", "baseline") if (args.report / f"{mode}.json").is_file()}
        product, baseline = loaded.get("product"), loaded.get("baseline")
        precision = (product or baseline or {}).get("precision", args.precision)
        smoke = (args.report / "smoke").is_file()
        print_table(summarise(product, baseline, precision), product, baseline,
                    table_title(product, baseline, smoke, RESOLUTION))
        return 0

    if args.smoke:
        args.reps = args.baseline_reps = 1
        args.baseline_text_sample = args.baseline_text_sample or 2
        clip_path, sam_path = smoke_checkpoints()
        folder = Path(tempfile.mkdtemp(prefix="bench-pipeline-smoke-"))
        (folder / "smoke").touch()
    else:
        if args.reps < 5:
            print(f"note: --reps {args.reps}: fewer than 5 repetitions; figures are not comparable with the "
                  "README's medians of 5", flush=True)
        args.reps = max(1, args.reps)
        clip_path, sam_path = prepared_checkpoints(CACHE_DIR, args.sam_model)
        folder = CACHE_DIR / "runs" / time.strftime("%Y%m%d-%H%M%S")  # worker results survive a failed mode
        folder.mkdir(parents=True, exist_ok=True)
    args.baseline_reps = max(1, min(args.baseline_reps, args.reps))
    if args.device != "cpu" and not args.skip_baseline:
        print("note: the baseline is a CPU implementation; with --device it is skipped", flush=True)
        args.skip_baseline = True
    plan_path = folder / "plan.json"
    plan_path.write_text(json.dumps(make_plan(args.reps, args.seed)))
    started = time.perf_counter()
    product = run_worker("product", args, plan_path, clip_path, sam_path, folder)
    baseline = None
    if not args.skip_baseline:
        try:
            baseline = run_worker("baseline", args, plan_path, clip_path, sam_path, folder)
        except subprocess.CalledProcessError as exc:
            print(f"baseline mode failed ({exc}); reporting the product alone", flush=True)
    wall_s = time.perf_counter() - started
    print(f"worker results kept in {folder}")
    rows = summarise(product, baseline, args.precision)
    print_table(rows, product, baseline, table_title(product, baseline, args.smoke, RESOLUTION))
    import torch

    info = {"cpu": torch.cpu.get_capabilities().get("cpu_name", "?"), "torch": torch.__version__,
            "threads": args.threads, "precision": args.precision, "reps": args.reps, "smoke": args.smoke,
            "baseline_reps": args.baseline_reps, "long_side": args.long_side, "wall_s": wall_s,
            "load1_after": os.getloadavg()[0], "device": args.device, "sam_model": args.sam_model,
            "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None}
    print(f"\n{info}")
    if product and product.get("cprofile") and args.cprofile:
        args.cprofile.write_text(product["cprofile"])
        print(f"wrote cProfile of one cold Run to {args.cprofile}")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows, "product": product, "baseline": baseline},
                                        indent=1, default=str))
        print(f"wrote {args.json}")
    if args.smoke:
        problems = check_smoke(product, baseline) + ([] if baseline or args.skip_baseline else ["baseline failed"])
        for problem in problems:
            print(f"smoke check failed: {problem}")
        print("smoke checks passed" if not problems else f"{len(problems)} smoke check(s) failed")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
