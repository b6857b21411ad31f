"""The dense methods the engine can show, as a table (like the checkpoint registry).

A method is named by its key. Each entry says which prompt ensemble its label
features use, whether feature surgery applies (CLIP Surgery's only), and, for
the methods that replace CLIP's last image block, the function computing that
block from the trunk's output. Adding a method is one entry here and one
function in `surgery.clip.dense_methods` (docs/method.md §9).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError
from ..method.results import METHOD_TITLES
from . import dense_methods

SURGERY_TEMPLATES = "surgery"  # CLIP Surgery's 85 templates
IMAGENET_TEMPLATES = "imagenet"  # OpenAI's 80 ImageNet templates


@dataclass(frozen=True)
class DenseMethod:
    name: str
    title: str
    citation: str
    summary: str
    templates: str
    feature_surgery: bool = False
    # (last block, trunk output (B, N, C), grid) -> the block's output tokens; None: the dual-path forward's
    last_block: Callable[[torch.nn.Module, torch.Tensor, int], torch.Tensor] | None = None

    @property
    def replaces_last_block(self) -> bool:
        return self.last_block is not None


METHODS: dict[str, DenseMethod] = {  # in METHOD_TITLES' order
    "clip": DenseMethod(
        "clip", METHOD_TITLES["clip"], "Radford et al., 2021",
        "CLIP as trained: each patch token compared with the label.", SURGERY_TEMPLATES),
    "surgery": DenseMethod(
        "surgery", METHOD_TITLES["surgery"], "Li et al., 2023 (arXiv 2304.05653)",
        "Value-value attention in the last blocks, then subtracts what all labels share.", SURGERY_TEMPLATES,
        feature_surgery=True),
    "maskclip": DenseMethod(
        "maskclip", METHOD_TITLES["maskclip"], "Zhou et al., ECCV 2022",
        "Each patch keeps only its own value in the last block (no attention, residual or MLP).", IMAGENET_TEMPLATES,
        last_block=lambda block, h, grid: dense_methods.maskclip_block(block, h)),
    "sclip": DenseMethod(
        "sclip", METHOD_TITLES["sclip"], "Wang et al., ECCV 2024",
        "Correlative self-attention (query-query plus key-key) in the last block.", IMAGENET_TEMPLATES,
        last_block=lambda block, h, grid: dense_methods.sclip_block(block, h)),
    "clearclip": DenseMethod(
        "clearclip", METHOD_TITLES["clearclip"], "Lan et al., ECCV 2024",
        "Query-query attention in the last block, without the residual and the MLP.", IMAGENET_TEMPLATES,
        last_block=lambda block, h, grid: dense_methods.clearclip_block(block, h)),
    "naclip": DenseMethod(
        "naclip", METHOD_TITLES["naclip"], "Hajimiri et al., WACV 2025",
        "Key-key attention plus a Gaussian bias towards neighbouring patches, without residual and MLP.",
        IMAGENET_TEMPLATES, last_block=dense_methods.naclip_block),
}
DEFAULT_METHODS = ("clip", "surgery")
DEFAULT_POINTS_FROM = "surgery"
MAX_METHODS = len(METHODS)


def check_methods(methods: object, points_from: object, is_resnet: bool = False) -> tuple[tuple[str, ...], str]:
    """The methods in the table's order, and the one the points come from; an `InputError` for an unknown
    name, a method that does not fit the backbone, or `points_from` not among the methods."""
    if methods is None or methods == "":
        names: list[str] = list(DEFAULT_METHODS)
    elif isinstance(methods, str):
        names = [part.strip().lower() for part in methods.split(",") if part.strip()]
    elif isinstance(methods, (list, tuple)) and all(isinstance(m, str) for m in methods) and len(methods) <= 64:
        names = [m.strip().lower() for m in methods]
    else:
        raise InputError(f"Methods must be names from: {', '.join(METHODS)}.")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(f"Unknown method '{str(unknown[0])[:40]}'. Choose from: {', '.join(METHODS)}.")
    if not names:
        raise InputError(f"Choose at least one method from: {', '.join(METHODS)}.")
    chosen = tuple(name for name in METHODS if name in names)
    if is_resnet and any(METHODS[name].replaces_last_block for name in chosen):
        refused = [METHODS[n].title for n in chosen if METHODS[n].replaces_last_block]
        raise InputError(f"{', '.join(refused)} work on ViT backbones only; with a ResNet choose CLIP and CLIP Surgery.")
    points = DEFAULT_POINTS_FROM if points_from in (None, "") else str(points_from).strip().lower()
    if points not in METHODS:
        raise InputError(f"Unknown method '{points[:40]}' for the points. Choose from: {', '.join(METHODS)}.")
    if points not in chosen:
        raise InputError(f"The points come from {METHODS[points].title}, which is not among the chosen methods; "
                         "add it, or take the points from one of them.")
    return chosen, points


assert tuple(METHODS) == tuple(METHOD_TITLES), "the table and the titles list the same methods in one order"
