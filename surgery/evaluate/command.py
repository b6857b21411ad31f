"""`python -m surgery evaluate ROOT --dataset NAME --methods ... --out DIR`: the run, start to finish.

Resolves the options once (`EvaluationSettings` and its hash), lists the dataset's ids, skips images
whose record already holds this hash, evaluates the rest on the chosen runner (serial, local
processes, Ray Data: `surgery.dataset.runners` with the evaluate task) with a progress bar, then sums
every complete record into DIR/metrics.json, writes DIR/predictions/ (with --save-predictions) and
DIR/report.html. Exit codes: 0 every image evaluated; 1 some failed (metrics of the others still
written); 2 a usage error (one line, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from ..command_options import positive_int
from ..errors import InputError

DEFAULT_METHODS = ("clip", "surgery", "maskclip", "sclip", "clearclip", "naclip")
EXIT_CODES = "exit codes: 0 every image evaluated; 1 some images failed (metrics of the others are written); 2 usage error"


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be a whole number of at least 0")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a number above 0")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be a number from 0 to 1")
    return value


AREA_OFF = "off"


def _area(text: str) -> float | str:
    if text.strip().lower() in ("off", "none"):
        return AREA_OFF  # not None: None means the option was not given
    return _fraction(text)


def add_evaluate_arguments(evaluate: argparse.ArgumentParser) -> None:
    """Every option of `evaluate`; protocol options default to the dataset's standard values (or the preset's)."""
    from ..clip.text_store import default_text_cache_dir  # noqa: F401 - import check only
    from ..device import DEVICE_CHOICES
    from ..hub.registry import CLIP_CHECKPOINTS, DEFAULT_CLIP, SAM_CHECKPOINTS
    from ..method.options import PRECISIONS
    from .datasets import DATASETS
    from .features import SCORED_METHODS

    evaluate.description = ("Score dense methods against a dataset's ground truth under the standard protocol "
                            "(SCLIP's harness): mIoU, aAcc, mAcc per method in DIR/metrics.json, and DIR/report.html.")
    evaluate.epilog = EXIT_CODES
    evaluate.add_argument("root", type=Path, help="the dataset's root folder, in its standard layout")
    evaluate.add_argument("--dataset", required=True, choices=list(DATASETS), help="which layout and protocol values")
    evaluate.add_argument("--methods", default=None, metavar="M,M",
                          help=f"methods to score, from {','.join(SCORED_METHODS)} "
                               f"(default {','.join(DEFAULT_METHODS)}; with --preset, the preset's method)")
    evaluate.add_argument("--out", type=Path, default=Path("out"), help="output folder (default ./out)")
    evaluate.add_argument("--classes", type=Path, metavar="FILE",
                          help="class file: one class a line, synonyms separated by ', ' (required for folder)")
    evaluate.add_argument("--preset", metavar="METHOD",
                          help="apply METHOD's own published settings for the dataset (sclip, naclip, clearclip, "
                               "maskclip); explicit protocol options still win")
    protocol = evaluate.add_argument_group("protocol (defaults: the dataset's standard values)")
    protocol.add_argument("--short-side", type=positive_int, help="keep-ratio resize to this short side")
    protocol.add_argument("--crop", type=_non_negative_int, help="sliding-window size in px (0: the whole image)")
    protocol.add_argument("--stride", type=positive_int, help="sliding-window stride in px")
    protocol.add_argument("--logit-scale", type=_positive_float, help="multiplier of the cosine logits before softmax")
    protocol.add_argument("--prob-threshold", type=_fraction,
                          help="pixels whose best class probability is below this become class 0")
    protocol.add_argument("--area-threshold", type=_area, metavar="A|off",
                          help="drop object classes predicted on at most this share of the object pixels")
    protocol.add_argument("--pamr-steps", type=_non_negative_int, help="PAMR refinement steps (0: off)")
    protocol.add_argument("--reduce-zero-label", action="store_true",
                          help="folder only: mask value 0 means unlabelled (ignored), 1.. are the classes")
    evaluate.add_argument("--sam", action="store_true", help="also score <method>+sam (SAM masks from each found "
                                                             "class's points)")
    evaluate.add_argument("--sam-model", choices=list(SAM_CHECKPOINTS), default=None, help="SAM size (default vit_b; "
                                                                                          "vit_h on a GPU)")
    evaluate.add_argument("--sam-checkpoint", type=Path, help="local SAM state dict (.pth/.safetensors)")
    evaluate.add_argument("--model", default=DEFAULT_CLIP,
                          help=f"{', '.join(CLIP_CHECKPOINTS)} or an open_clip MODEL:TAG (default {DEFAULT_CLIP})")
    evaluate.add_argument("--clip-checkpoint", type=Path, help="local CLIP state dict (.safetensors/.pt/.bin)")
    evaluate.add_argument("--device", default="auto", metavar="DEVICE",
                          help=f"where the models run: {DEVICE_CHOICES} (default auto)")
    evaluate.add_argument("--precision", choices=PRECISIONS, default=None,
                          help="image encoders' precision (default fp32 everywhere: scores should be exact)")
    evaluate.add_argument("--save-predictions", action="store_true",
                          help="write DIR/predictions/<method>/<id>.png (class indices, palette PNG)")
    evaluate.add_argument("--limit", type=positive_int, metavar="N", help="only the first N images")
    evaluate.add_argument("--workers", type=positive_int, default=None, metavar="N",
                          help="local processes (default 1: this process); with --ray, the number of actors")
    evaluate.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                          help="run on Ray Data: a cluster's address, or none for $RAY_ADDRESS or a new local "
                               "cluster; the dataset and DIR must be on a filesystem every node sees")


# --------------------------------------------------------------------------- resolving the options

def resolve_protocol(args: argparse.Namespace, spec, preset):
    """The dataset's standard values, or the preset's, with every option given on the command line applied."""
    from dataclasses import replace

    from .protocol import Protocol

    base = preset.protocol() if preset is not None else Protocol(
        short_side=spec.short_side, long_side=spec.long_side, logit_scale=spec.logit_scale,
        prob_threshold=spec.prob_threshold, area_threshold=spec.area_threshold)
    changes = {field: value for field, value in (
        ("short_side", args.short_side), ("crop", args.crop), ("stride", args.stride),
        ("logit_scale", args.logit_scale), ("prob_threshold", args.prob_threshold),
        ("pamr_steps", args.pamr_steps)) if value is not None}
    if args.area_threshold is not None:
        changes["area_threshold"] = None if args.area_threshold == AREA_OFF else args.area_threshold
    return replace(base, **changes)


def check_arguments(args: argparse.Namespace):
    """The dataset's table entry, after the checks that need no file: an `InputError` for options that
    do not go together."""
    from .datasets import check_dataset

    spec = check_dataset(args.dataset)
    if spec.key == "folder" and args.classes is None:
        raise InputError("The folder dataset needs --classes FILE (one class a line, synonyms separated by ', ').")
    if args.reduce_zero_label and spec.key != "folder":
        raise InputError(f"--reduce-zero-label is for the folder dataset; {spec.key} has its own label handling.")
    return spec


def resolve_settings(args: argparse.Namespace, device: str, precision: str):
    from ..hub.registry import default_sam_model
    from ..hub.sources import resolve_clip, resolve_sam
    from ..dataset.settings import checkpoint_digest
    from .classes import packaged_classes, read_class_file
    from .features import check_scored_methods
    from .presets import find_preset
    from ..method.table import METHOD_TABLE
    from .settings import EvaluationSettings

    spec = check_arguments(args)
    preset = find_preset(args.preset, spec.key) if args.preset else None
    if args.classes is not None:
        classes = read_class_file(args.classes)
    else:
        classes = packaged_classes(preset.classes_file if preset else spec.classes_file)
    methods = check_scored_methods(args.methods if args.methods else (preset.method if preset else DEFAULT_METHODS))
    protocol = resolve_protocol(args, spec, preset)
    if protocol.crop and protocol.stride > protocol.crop:
        raise InputError(f"--stride {protocol.stride} is larger than --crop {protocol.crop}: pixels between windows "
                         "would have no prediction.")
    clip_source = resolve_clip(args.model, args.clip_checkpoint)
    clip_weights = checkpoint_digest(clip_source.weights_path())
    sam_model = sam_checkpoint = sam_weights = None
    proxied = [name for name in methods if name in METHOD_TABLE and METHOD_TABLE[name].proxy]
    if proxied and not (args.sam or args.sam_model or args.sam_checkpoint):
        raise InputError("ProxyCLIP takes its attention from SAM's image encoder: give --sam-checkpoint FILE or "
                         "--sam-model vit_b (or leave proxyclip out).")
    if args.sam or proxied:
        sam_model = args.sam_model or default_sam_model(runs_on_gpu=device.startswith("cuda"))
        sam_weights = checkpoint_digest(resolve_sam(sam_model, args.sam_checkpoint).weights_path())
        sam_checkpoint = None if args.sam_checkpoint is None else str(args.sam_checkpoint)
    return EvaluationSettings(
        root=str(args.root), dataset=spec.key, classes=classes, methods=methods, sam=bool(args.sam),
        protocol=protocol, reduce_zero_label=spec.reduce_zero_label or bool(args.reduce_zero_label),
        has_background=spec.has_background, model=args.model, model_name=clip_source.display_name,
        clip_checkpoint=None if args.clip_checkpoint is None else str(args.clip_checkpoint),
        clip_weights=clip_weights, sam_model=sam_model, sam_checkpoint=sam_checkpoint, sam_weights=sam_weights,
        device=device, precision=precision, preset=preset.method if preset else None), preset


# --------------------------------------------------------------------------- the run

def run_evaluate(args: argparse.Namespace) -> int:
    """The whole command; raises `UserError` (one line) for bad options or input or a failed runner."""
    from ..dataset import runners
    from ..dataset.command import write_json
    from ..dataset.single import ImageJob
    from .datasets import sample_ids
    from ..precision import resolve_precision
    from .settings import options_hash
    from .single import evaluate_one, is_done, load_evaluation_models, warm_query_features

    spec = check_arguments(args)
    ids = sample_ids(spec, args.root)
    total_listed = len(ids)
    if args.limit:
        ids = ids[: args.limit]
    task = runners.Task(load_evaluation_models, evaluate_one)
    with runners.chosen_runner(args.ray, args.device, len(ids), args.workers) as runner:
        device, precision_device = runners.run_device(args.device, runner)
        precision = args.precision or "fp32"  # scores should be exact: fp32 unless asked, on every device
        if precision_device is not None:
            precision = resolve_precision(precision, precision_device)
        settings, preset = resolve_settings(args, device, precision)
        digest = options_hash(settings)
        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        jobs = [ImageJob(str(settings.image_path(i)), i) for i in ids]
        pending = [job for job in jobs if not is_done(out, settings, job.stem, digest)]
        skipped = len(jobs) - len(pending)
        if skipped:
            print(f"note: {skipped} of {len(jobs)} images already evaluated with these options; skipped",
                  file=sys.stderr)
        if pending and (runner.kind == "processes" or (runner.kind == "ray" and runner.plan.device == "cpu")):
            warm_query_features(settings)  # to the disk cache once, not once per worker (same device as theirs)
        failed, seconds = runners.run_with_progress(runner, jobs, pending, settings, out, digest, task, "evaluating",
                                                    lambda outcome: outcome.stem)
    from .results import collect, write_predictions

    for job in jobs:
        if job.stem not in failed and not is_done(out, settings, job.stem, digest):
            failed[job.stem] = "no record was written"
    complete = [job.stem for job in jobs if job.stem not in failed]
    results = collect(out, settings, complete)
    evaluated_now = len(pending) - len([job for job in pending if job.stem in failed])
    metrics = results.metrics_json(settings, preset, digest, images=len(jobs), failed=failed)
    metrics["timings"] = {
        "runner": runner.kind, "workers": runner.workers, "evaluated_now": evaluated_now, "skipped": skipped,
        "seconds": round(seconds, 3),
        "images_per_minute": round(60 * evaluated_now / seconds, 2) if evaluated_now and seconds > 0 else None}
    if args.limit or (spec.expected_images and total_listed != spec.expected_images):
        metrics["note"] = (f"{len(jobs)} of the {total_listed} listed images" if args.limit else
                           f"{total_listed} images listed; the official split has {spec.expected_images}")
    write_json(out / "metrics.json", metrics)
    if args.save_predictions:
        write_predictions(out, settings, complete)
    from .report import write_report

    report = write_report(metrics, results, settings, out)
    print(f"metrics: {out / 'metrics.json'}")
    print(f"report: {report}")
    for name, record in metrics["methods"].items():
        miou = record["mIoU"]
        print(f"  {name}: mIoU " + ("n/a" if miou is None else f"{miou:.2f}"))
    if failed:
        print(f"{len(failed)} of {len(jobs)} images failed (listed in metrics.json)", file=sys.stderr)
    return 1 if failed else 0
