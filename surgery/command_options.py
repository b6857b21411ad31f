"""What every command that explains images shares: its options, the request they make, exit codes.

`explain`, `calibrate` and `evaluate` take the same explanation options (labels, maps, models,
points); `request_from_args` turns them into one checked `ExplainRequest` (`surgery.request`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .device import DEVICE_CHOICES
from .hub.registry import CLIP_CHECKPOINTS, DEFAULT_CLIP, DEFAULT_SAM_CPU, DEFAULT_SAM_GPU, SAM_CHECKPOINTS
from .images import WORK_MAX_SIDE
from .method.options import (DEFAULT_REDUNDANCY, DEFAULT_RESOLUTION, MIN_RESOLUTION, PRECISIONS,
                             REDUNDANCY_MODES)
from .method.table import DEFAULT_METHODS, METHOD_TABLE, PREFERRED_POINTS_FROM
from .request import ExplainRequest, build_request

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_CODES_HELP = ("exit codes: 0 every image done; 1 some images failed (the rest are done, any summary is "
                   "written) or weights could not be obtained; 2 a usage error (a bad option or input)")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; we print one line
        self.exit(2, f"error: {message} (see --help)\n")


def _max_side(text: str) -> int:
    value = int(text)
    if value != 0 and value < MIN_RESOLUTION:
        raise argparse.ArgumentTypeError(f"must be 0 (keep the original size) or at least {MIN_RESOLUTION} pixels")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a whole number of at least 1")
    return value


def add_explain_options(explain: argparse.ArgumentParser) -> None:
    """The options every command that explains images shares: labels, maps, models, points."""
    explain.add_argument("--labels", required=True, help='comma-separated labels; "a+b" combines targets')
    explain.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION,
                         help=f"CLIP input size, a multiple of the patch size in 224..1024 (default {DEFAULT_RESOLUTION})")
    explain.add_argument("--threshold", default=None, metavar="T",
                         help="the raw value (of the map the points come from) below which a region counts as "
                              "no evidence; 0 means off, as in the app (default: off)")
    explain.add_argument("--redundancy", choices=REDUNDANCY_MODES, default=DEFAULT_REDUNDANCY,
                         help="what feature surgery subtracts: the 59-class background vocabulary with your labels "
                              "(vocab, default), your other labels (labels), or the empty prompt (empty)")
    explain.add_argument("--methods", default=",".join(DEFAULT_METHODS), metavar="M,M",
                         help=f"maps to compute, comma-separated, from {','.join(METHOD_TABLE)} "
                              f"(default {','.join(DEFAULT_METHODS)})")
    explain.add_argument("--points-from", default=None, metavar="METHOD",
                         help="the method whose map decides found / not found and gives SAM's points "
                              f"(default {PREFERRED_POINTS_FROM} when computed, else the first of --methods); "
                              "the threshold applies to its raw values")
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


def request_from_args(args: argparse.Namespace, device) -> ExplainRequest:
    """The explanation request the options describe, checked once (`build_request`); notes on stderr.
    `explain`'s --extra-points, --removed-points, --truth-label and --truth-mask (a file path, which
    `build_request` reads) are taken where the command has them."""
    request = build_request(args.labels, threshold=args.threshold, resolution=args.resolution,
                            redundancy=args.redundancy, methods=args.methods, points_from=args.points_from,
                            precision=args.precision, device=device, instances=args.instances,
                            positive_only=args.positive_only, extra_points=getattr(args, "extra_points", None),
                            truth_label=getattr(args, "truth_label", None),
                            truth_mask=getattr(args, "truth_mask", None),
                            removed_points=getattr(args, "removed_points", None))
    for note in request.notes:
        print(f"note: {note}", file=sys.stderr)
    return request
