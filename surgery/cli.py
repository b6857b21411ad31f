"""`python -m surgery explain IMAGE [IMAGE ...] --labels "person, bench, cat+grass"`, and
`python -m surgery calibrate FOLDER --labels "..." --out DIR` (dataset mode, `surgery.dataset`).

Exit codes: 0 all images explained; 2 bad arguments or at least one unreadable
image (the others are still processed); 1 weights could not be obtained.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from .clip.methods import DEFAULT_METHODS, DEFAULT_POINTS_FROM, METHODS, check_methods
from .clip.vit import MIN_RESOLUTION, check_resolution
from .device import DEVICE_CHOICES, resolve_device
from .errors import InputError, UserError, WeightsUnavailable
from .hub.registry import CLIP_CHECKPOINTS, DEFAULT_CLIP, DEFAULT_SAM_CPU, DEFAULT_SAM_GPU, SAM_CHECKPOINTS
from .images import WORK_MAX_SIDE, expand_images, unique_stem
from .memory import release_freed_memory
from .method.feature_surgery import REDUNDANCY_MODES
from .method.labels import parse_labels
from .method.results import DEFAULT_REDUNDANCY, DEFAULT_RESOLUTION, MapOptions
from .method.threshold import THRESHOLD_RULE, check_threshold
from .method.views import PointOptions
from .output.files import write_outputs
from .precision import PRECISIONS, check_precision, default_precision

class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; we print one line
        self.exit(2, f"error: {message} (see --help)\n")


def _threshold(text: str) -> float | None:
    try:
        return check_threshold(text)
    except InputError:
        raise argparse.ArgumentTypeError(f"must be {THRESHOLD_RULE}") from None


def _max_side(text: str) -> int:
    value = int(text)
    if value != 0 and value < MIN_RESOLUTION:
        raise argparse.ArgumentTypeError(f"must be 0 (keep the original size) or at least {MIN_RESOLUTION} pixels")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m surgery", description="CLIP Surgery explanations from the command line.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    explain = commands.add_parser("explain", help="explain images: heatmaps, points, SAM masks")
    explain.add_argument("images", nargs="+", help="image files or folders of images")
    add_explain_options(explain)
    explain.add_argument("--format", choices=("files", "coco"), default="files",
                         help="'coco' also writes coco.json (RLE masks, one category per label)")
    explain.add_argument("--out", type=Path, default=Path("out"), help="output folder (default ./out)")
    from .dataset.command import add_calibrate_arguments

    calibrate = commands.add_parser("calibrate", help="explain a folder, pool its values, suggest a threshold: "
                                                      "summary.json and report.html")
    add_calibrate_arguments(calibrate)
    add_explain_options(calibrate)
    return parser


def add_explain_options(explain: argparse.ArgumentParser) -> None:
    """The options every command that explains images shares: labels, maps, models, points."""
    explain.add_argument("--labels", required=True, help='comma-separated labels; "a+b" combines targets')
    explain.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION,
                         help=f"CLIP input size, a multiple of the patch size in 224..1024 (default {DEFAULT_RESOLUTION})")
    explain.add_argument("--threshold", type=_threshold, default=None, metavar="T",
                         help="raw CLIP Surgery similarity below which a region counts as no evidence; "
                              "0 means off, as in the app (default: off)")
    explain.add_argument("--redundancy", choices=REDUNDANCY_MODES, default=DEFAULT_REDUNDANCY,
                         help="what feature surgery subtracts: the 59-class background vocabulary with your labels "
                              "(vocab, default), your other labels (labels), or the empty prompt (empty)")
    explain.add_argument("--methods", default=",".join(DEFAULT_METHODS), metavar="M,M",
                         help=f"maps to compute, comma-separated, from {','.join(METHODS)} "
                              f"(default {','.join(DEFAULT_METHODS)})")
    explain.add_argument("--points-from", default=DEFAULT_POINTS_FROM, metavar="METHOD",
                         help="the method whose map decides found / not found and gives SAM's points "
                              f"(default {DEFAULT_POINTS_FROM}); the threshold applies to its raw values")
    explain.add_argument("--model", default=DEFAULT_CLIP,
                         help=f"{', '.join(CLIP_CHECKPOINTS)} or an open_clip MODEL:TAG (default {DEFAULT_CLIP})")
    explain.add_argument("--clip-checkpoint", type=Path, help="local CLIP state dict (.safetensors/.pt/.bin)")
    explain.add_argument("--no-sam", action="store_true", help="skip SAM masks")
    explain.add_argument("--sam-model", choices=list(SAM_CHECKPOINTS), default=None,
                         help=f"SAM model (default {DEFAULT_SAM_CPU}; {DEFAULT_SAM_GPU} where the models run "
                              "on a GPU)")
    explain.add_argument("--sam-checkpoint", type=Path,
                         help="local SAM or SAM 2.1 checkpoint (.pth/.pt/.safetensors); which it is is read from it")
    explain.add_argument("--device", default="auto", metavar="DEVICE",
                         help=f"where the models run: {DEVICE_CHOICES} (default auto: CUDA when available, else CPU)")
    explain.add_argument("--precision", choices=PRECISIONS, default=None,
                         help="image encoders in float32 (exact; the CPU default), bfloat16 (the GPU default; "
                              "on a CPU only where it runs bf16 natively) or float16 (GPU only)")
    explain.add_argument("--instances", action="store_true",
                         help="split each label's strong region into connected instances, one mask each")
    explain.add_argument("--positive-only", action="store_true", help="send SAM positive points only")
    explain.add_argument("--max-side", type=_max_side, default=WORK_MAX_SIDE, metavar="PX",
                         help=f"scale larger images down to this longest side first, as the app does "
                              f"(default {WORK_MAX_SIDE}; 0 keeps the original size)")


def image_report(path: Path, directory: Path, explanation) -> str:
    """One stdout line per explained image: where its files went and what was found."""
    found = [view.text for view in explanation.labels if view.found]
    missing = [view.text for view in explanation.labels if not view.found]
    return (f"{path.name} -> {directory}: found {', '.join(found) or 'none'}"
            + (f"; not found {', '.join(missing)}" if missing else ""))


def run_explain(args: argparse.Namespace) -> int:
    from .clip.text_store import default_text_cache_dir
    from .loading import load_clip, load_segmenter
    from .pipeline import explain_file

    parsed = parse_labels(args.labels)
    for note in parsed.notes:
        print(f"note: {note}", file=sys.stderr)
    methods, points_from = check_methods(args.methods, args.points_from)
    device = resolve_device(args.device)
    precision = check_precision(args.precision or default_precision(device), device)
    options = MapOptions(resolution=args.resolution, redundancy=args.redundancy, precision=precision,
                         methods=methods, points_from=points_from)
    images = expand_images(args.images)
    if not images:
        raise InputError("No images found in the given folders.")
    explainer = load_clip(args.model, args.clip_checkpoint, text_cache_dir=default_text_cache_dir(), device=device)
    check_resolution(options.resolution, explainer.patch_size)  # once, not once per image
    check_methods(methods, points_from, explainer.is_resnet)
    segmenter = None if args.no_sam else load_segmenter(args.sam_model, args.sam_checkpoint, precision=precision,
                                                        device=device)
    failures = 0
    used: set[str] = set()
    for path in tqdm(images, desc="explaining", unit="image", disable=len(images) < 2):
        try:
            done = explain_file(path, explainer, segmenter, parsed.labels, options, args.threshold,
                                PointOptions(args.instances, args.positive_only), label_notes=parsed.notes,
                                max_side=args.max_side, coco=args.format == "coco")
        except InputError as exc:
            failures += 1
            tqdm.write(f"error: {exc}", file=sys.stderr)
            continue
        if done.working.note:
            tqdm.write(f"note: {path.name}: {done.working.note}", file=sys.stderr)
        directory = args.out / unique_stem(path, used)
        write_outputs(directory, done.files)
        tqdm.write(image_report(path, directory, done.explanation))
        release_freed_memory()  # each image's encoder buffers, before the next image's
    return 2 if failures else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "calibrate":
            from .dataset.command import run_calibrate

            return run_calibrate(args)
        return run_explain(args)
    except WeightsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def console_main() -> None:
    """The `clip-surgery` console command (`pip install .`): the same as `python -m surgery`."""
    sys.exit(main())
