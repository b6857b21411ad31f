"""`python -m surgery calibrate FOLDER --labels "..." --out DIR`: the run over a folder, start to finish.

Resolves the options once (`CalibrationSettings`, its hash), names every image's output folder up
front (file-name order, as `explain` names them), skips folders already complete for this hash,
explains the rest on the chosen runner with a progress bar, then writes DIR/summary.json and
DIR/report.html from every complete folder. Exit codes as `explain`: 0, 2 when an image failed or an
option/input is bad (one line, no traceback), 1 when weights cannot be obtained.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


from ..command_options import EXIT_OK, EXIT_SOME_FAILED, positive_int
from ..errors import InputError
from .report import write_report
from .settings import CalibrationSettings, checkpoint_digest, options_hash
from .single import ImageJob, is_done
from .summary import build_summary, read_image_values


def add_calibrate_arguments(calibrate: argparse.ArgumentParser) -> None:
    """What `calibrate` takes besides the options shared with `explain` (`add_explain_options`)."""
    calibrate.add_argument("folder", type=Path, help="the folder of images to calibrate on")
    calibrate.add_argument("--format", choices=("files", "coco"), default="files",
                           help="'coco' also writes each image's coco.json")
    calibrate.add_argument("--out", type=Path, default=Path("out"),
                           help="output folder: one folder per image, summary.json, report.html (default ./out)")
    calibrate.add_argument("--workers", type=positive_int, default=None, metavar="N",
                           help="local processes, each loading the models once (default 1: this process); "
                                "with --ray, the number of actors")
    calibrate.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                           help="run on Ray Data (pip install .[ray]): a cluster's address, or none for "
                                "$RAY_ADDRESS or a new local cluster; outputs must be on a filesystem every "
                                "node sees")


def folder_jobs(folder: Path) -> list[ImageJob]:
    """The folder's images in file-name order, each with its output folder name (as `explain` names
    them: the stem, `-2`, `-3`, ... for repeats), decided before any work so no runner changes it."""
    from ..images import IMAGE_SUFFIXES, expand_images, unique_stem

    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; calibrate takes a folder of images.")
    images = expand_images([str(folder)])
    if not images:
        raise InputError(f"No images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    used: set[str] = set()
    return [ImageJob(str(path), unique_stem(path, used)) for path in images]


def resolve_settings(args: argparse.Namespace, device: str, precision_device) -> CalibrationSettings:
    """The run's settings: the explanation request built and checked once (`request_from_args`; the
    precision for `precision_device`, None where only the workers know their device), checkpoints located
    (downloaded once, here, before any worker starts) and digested."""
    from ..command_options import request_from_args
    from ..hub.registry import default_sam_model
    from ..method.table import check_segmenter
    from ..hub.sources import resolve_clip, resolve_sam

    request = request_from_args(args, precision_device)
    clip_source = resolve_clip(args.model, args.clip_checkpoint)
    clip_weights = checkpoint_digest(clip_source.weights_path())
    sam_model = sam_checkpoint = sam_weights = None
    if not args.no_sam:
        sam_model = args.sam_model or default_sam_model(runs_on_gpu=device.startswith("cuda"))
        sam_source = resolve_sam(sam_model, args.sam_checkpoint)
        sam_weights = checkpoint_digest(sam_source.weights_path())
        sam_checkpoint = None if args.sam_checkpoint is None else str(args.sam_checkpoint)
    if sam_model is None:
        check_segmenter(request.maps.methods, None)  # with SAM: each worker checks the model it loads
    return CalibrationSettings(
        request=request, labels=args.labels, model=args.model, model_name=clip_source.display_name,
        clip_checkpoint=None if args.clip_checkpoint is None else str(args.clip_checkpoint),
        clip_weights=clip_weights, sam_model=sam_model, sam_checkpoint=sam_checkpoint, sam_weights=sam_weights,
        device=device, max_side=args.max_side, coco=args.format == "coco",
        precision_checked_on_load=precision_device is None)


_FLAT_LIST = re.compile(r"\[\s*((?:-?[0-9][-0-9.eE+]*|true|false|null)(?:,\s*(?:-?[0-9][-0-9.eE+]*|true|false|null))*)\s*\]")


def write_json(path: Path, content: dict) -> None:
    """Indented JSON with lists of plain values (counts, edges, found flags) kept on one line."""
    text = json.dumps(content, indent=1, ensure_ascii=False)
    text = _FLAT_LIST.sub(lambda match: "[" + ", ".join(v.strip() for v in match.group(1).split(",")) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")


def run_calibrate(args: argparse.Namespace) -> int:
    """The whole command; raises `UserError` (one line) for bad options, input or a failed runner."""
    from . import runners

    jobs = folder_jobs(args.folder)
    with runners.chosen_runner(args.ray, args.device, len(jobs), args.workers) as runner:
        device, precision_device = runners.run_device(args.device, runner)
        if runner.plan is not None and runner.plan.device == "cuda" and args.precision is None:
            args.precision = "bf16"  # the GPU default; an actor whose GPU lacks it says so
        settings = resolve_settings(args, device, precision_device)
        digest = options_hash(settings)
        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        pending = [job for job in jobs if not is_done(out / job.stem, job, digest)]
        skipped = len(jobs) - len(pending)
        if skipped:
            print(f"note: {skipped} of {len(jobs)} images already done with these options; skipped",
                  file=sys.stderr)
        failed, seconds = runners.run_with_progress(runner, jobs, pending, settings, out, digest, runners.CALIBRATE,
                                                    "calibrating", lambda outcome: outcome.file)
    complete = [job for job in jobs if job.file not in failed and is_done(out / job.stem, job, digest)]
    complete_files = {job.file for job in complete}
    for job in jobs:
        if job.file not in failed and job.file not in complete_files:
            failed[job.file] = "no outputs were written"
    images, unreadable = read_image_values(complete, out, len(settings.label_texts))
    failed.update(unreadable)
    summary = build_summary(settings, len(jobs), images, failed, digest)
    explained_now = len(pending) - len([job for job in pending if job.file in failed])
    summary["timings"] = {
        "runner": runner.kind, "workers": runner.workers, "explained_now": explained_now, "skipped": skipped,
        "seconds": round(seconds, 3),
        "images_per_minute": round(60 * explained_now / seconds, 2) if explained_now and seconds > 0 else None,
    }
    write_json(out / "summary.json", summary)
    report = write_report(summary, out)
    suggested = summary["suggested_threshold"]
    print(f"summary: {out / 'summary.json'}")
    print(f"report: {report}")
    print("suggested threshold: " + ("none" if suggested is None else f"{suggested:.6g}"))
    for record in summary["labels"]:
        rate = record["found_rate"]
        print(f"  {record['label']}: found in {record['found']} of {summary['explained']} images"
              + ("" if rate is None else f" ({100 * rate:.0f} %)"))
    if summary.get("suggested_threshold_note"):
        print(f"note: {summary['suggested_threshold_note']}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK
