"""`python -m surgery explain IMAGE [IMAGE ...] --labels "person, bench, cat+grass"`, and
`python -m surgery calibrate FOLDER --labels "..." --out DIR` (dataset mode, `surgery.dataset`).

Exit codes (every command): 0 every image done; 1 some images failed (the others are still done, and
a summary still written) or weights could not be obtained; 2 a usage error (a bad option or input).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from .command_options import (EXIT_CODES_HELP, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, OneLineParser,
                              add_explain_options, request_from_args)
from .device import resolve_device
from .errors import InputError, UserError, WeightsUnavailable
from .images import expand_images, unique_stem
from .memory import release_freed_memory
from .method.table import check_segmenter


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m surgery", description="CLIP Surgery explanations from the command line.",
                           epilog=EXIT_CODES_HELP)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    explain = commands.add_parser("explain", help="explain images: heatmaps, points, SAM masks",
                                  epilog=EXIT_CODES_HELP)
    explain.add_argument("images", nargs="+", help="image files or folders of images")
    add_explain_options(explain)
    explain.add_argument("--extra-points", default=None, metavar="JSON",
                         help='your own points, added to the derived ones, in the pixels of the image worked on '
                              '(after --max-side): \'{"rocket": [[120, 40, 1], [10, 10, 0]]}\' (1 positive, '
                              '0 negative); one image only')
    explain.add_argument("--removed-points", default=None, metavar="JSON",
                         help="derived points to leave out, in the same form (as result.json lists a page's "
                              "edits); one image only")
    explain.add_argument("--truth-label", default=None, metavar="LABEL",
                         help="score each map and the SAM mask against --truth-mask for this label "
                              "(result.json's truth: areas and IoU); one image only")
    explain.add_argument("--truth-mask", type=Path, default=None, metavar="PNG",
                         help="the label's pixels: white (or opaque) on black, the image's shape at any size")
    explain.add_argument("--format", choices=("files", "coco"), default="files",
                         help="'coco' also writes coco.json (RLE masks, one category per label)")
    explain.add_argument("--out", type=Path, default=Path("out"), help="output folder (default ./out)")
    from .dataset.command import add_calibrate_arguments

    calibrate = commands.add_parser("calibrate", help="explain a folder, pool its values, suggest a threshold: "
                                                      "summary.json and report.html", epilog=EXIT_CODES_HELP)
    add_calibrate_arguments(calibrate)
    add_explain_options(calibrate)
    from .evaluate.command import add_evaluate_arguments

    add_evaluate_arguments(commands.add_parser("evaluate", help="score dense methods against a dataset's ground "
                                                                "truth: metrics.json and report.html"))
    return parser


def image_report(path: Path, directory: Path, explanation) -> str:
    """One stdout line per explained image: where its files went and what was found."""
    found = [view.text for view in explanation.labels if view.found]
    missing = [view.text for view in explanation.labels if not view.found]
    return (f"{path.name} -> {directory}: found {', '.join(found) or 'none'}"
            + (f"; not found {', '.join(missing)}" if missing else ""))


def run_explain(args: argparse.Namespace) -> int:
    from .clip.text_store import default_text_cache_dir
    from .loading import load_clip, load_segmenter
    from .output.files import write_files
    from .pipeline import explain_file

    device = resolve_device(args.device)
    request = request_from_args(args, device)
    images = expand_images(args.images)
    if not images:
        raise InputError("No images found in the given folders.")
    edits = request.points.extra_points or request.points.removed_points
    if len(images) > 1 and (edits or request.truth is not None):
        raise InputError("--extra-points, --removed-points and --truth-mask describe one image; "
                         f"give one image (got {len(images)}).")
    explainer = load_clip(args.model, args.clip_checkpoint, text_cache_dir=default_text_cache_dir(), device=device)
    explainer.check_fits(request.maps)  # once, not once per image
    if args.no_sam:
        check_segmenter(request.maps.methods, None)
    segmenter = None if args.no_sam else load_segmenter(args.sam_model, args.sam_checkpoint,
                                                        precision=request.maps.precision, device=device)
    if segmenter is not None:
        check_segmenter(request.maps.methods, segmenter.family)
    failures = 0
    used: set[str] = set()
    for path in tqdm(images, desc="explaining", unit="image", disable=len(images) < 2):
        try:
            done = explain_file(path, explainer, segmenter, request, max_side=args.max_side,
                                coco=args.format == "coco")
        except InputError as exc:
            failures += 1
            tqdm.write(f"error: {exc}", file=sys.stderr)
            continue
        if done.working.note:
            tqdm.write(f"note: {path.name}: {done.working.note}", file=sys.stderr)
        directory = args.out / unique_stem(path, used)
        write_files(directory, done.files)
        tqdm.write(image_report(path, directory, done.explanation))
        release_freed_memory()  # each image's encoder buffers, before the next image's
    return EXIT_SOME_FAILED if failures else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "calibrate":
            from .dataset.command import run_calibrate

            return run_calibrate(args)
        if args.command == "evaluate":
            from .evaluate.command import run_evaluate

            return run_evaluate(args)
        return run_explain(args)
    except WeightsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SOME_FAILED
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def console_main() -> None:
    """The `clip-surgery` console command (`pip install .`): the same as `python -m surgery`."""
    sys.exit(main())
