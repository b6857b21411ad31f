"""The dense methods the engine can show, as one table (like the checkpoint registry).

A method is named by its key everywhere: options, maps, displays, file names, the page and the API.
Each row says how the method is shown (title, citation, one-line summary), which prompt ensemble its
label features use, and what it needs from the backbone. The networks live in `surgery.clip`: a method
whose `block` is set replaces CLIP's last image block with the function of that name in
`surgery.clip.last_blocks`. Adding a method is one row here and one block there (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

SURGERY_TEMPLATES = "surgery"  # CLIP Surgery's 85 templates
IMAGENET_TEMPLATES = "imagenet"  # OpenAI's 80 ImageNet templates


@dataclass(frozen=True)
class MethodRow:
    """One dense method.

    `block`: True when the method replaces CLIP's last image block (its trunk is shared with the other
    such methods); False for the two maps of the dual-path forward (CLIP and CLIP Surgery).
    `feature_surgery`: its maps subtract what the labels share (CLIP Surgery only).
    `proxy`: its attention comes from SAM's image encoder (ProxyCLIP), so it needs SAM (ViT) loaded.
    """

    name: str
    title: str
    citation: str
    summary: str
    templates: str
    block: bool = False
    feature_surgery: bool = False
    proxy: bool = False

    @property
    def vit_only(self) -> bool:
        """A method that replaces a ViT block has no ResNet form."""
        return self.block


METHOD_TABLE: dict[str, MethodRow] = {row.name: row for row in (  # in the order they are shown
    MethodRow("clip", "CLIP", "Radford et al., 2021",
              "CLIP as trained: each patch token compared with the label.", SURGERY_TEMPLATES),
    MethodRow("surgery", "CLIP Surgery", "Li et al., 2023 (arXiv 2304.05653)",
              "Value-value attention in the last blocks, then subtracts what all labels share.", SURGERY_TEMPLATES,
              feature_surgery=True),
    MethodRow("maskclip", "MaskCLIP", "Zhou et al., ECCV 2022",
              "Each patch keeps only its own value in the last block (no attention, residual or MLP).",
              IMAGENET_TEMPLATES, block=True),
    MethodRow("sclip", "SCLIP", "Wang et al., ECCV 2024",
              "Correlative self-attention (query-query plus key-key) in the last block.", IMAGENET_TEMPLATES,
              block=True),
    MethodRow("clearclip", "ClearCLIP", "Lan et al., ECCV 2024",
              "Query-query attention in the last block, without the residual and the MLP.", IMAGENET_TEMPLATES,
              block=True),
    MethodRow("naclip", "NACLIP", "Hajimiri et al., WACV 2025",
              "Key-key attention plus a Gaussian bias towards neighbouring patches, without residual and MLP.",
              IMAGENET_TEMPLATES, block=True),
    MethodRow("scclip", "SC-CLIP", "Bai et al., 2024 (arXiv 2411.15869)",
              "Repairs outlier patches, guides the last block with an intermediate layer's similarities, and "
              "fuses intermediate layers.", IMAGENET_TEMPLATES, block=True),
    MethodRow("resclip", "ResCLIP", "Yang et al., CVPR 2025",
              "NACLIP's last block plus the trunk's own attention, refined by a first prediction's labels.",
              IMAGENET_TEMPLATES, block=True),
    MethodRow("proxyclip", "ProxyCLIP", "Lan et al., ECCV 2024",
              "The last block's attention taken from SAM's image encoder (a proxy), values from CLIP, on SAM's "
              "64 x 64 grid.", IMAGENET_TEMPLATES, block=True, proxy=True),
)}
DEFAULT_METHODS = ("clip", "surgery")
PREFERRED_POINTS_FROM = "surgery"  # where the points come from when it is computed and none is named


def method_title(name: str) -> str:
    """A method's display title (the key itself for a name not in the table)."""
    row = METHOD_TABLE.get(name)
    return row.title if row else name


def default_points_from(methods: tuple[str, ...]) -> str:
    """CLIP Surgery when it is computed, else the first computed method."""
    return PREFERRED_POINTS_FROM if PREFERRED_POINTS_FROM in methods else methods[0]


def _method_names(methods: object) -> list[str]:
    if methods is None or methods == "":
        return list(DEFAULT_METHODS)
    if isinstance(methods, str):
        return [part.strip().lower() for part in methods.split(",") if part.strip()]
    if isinstance(methods, (list, tuple)) and len(methods) <= 64 and all(isinstance(m, str) for m in methods):
        return [m.strip().lower() for m in methods]
    raise InputError(f"Methods must be names from: {', '.join(METHOD_TABLE)}.")


def check_methods(methods: object, points_from: object = None) -> tuple[tuple[str, ...], str]:
    """The methods in the table's order and the one the points come from (`default_points_from` when
    none is named); an `InputError` for an unknown name, none at all, or `points_from` not among them.

    `methods` is a comma-separated text or a sequence of names; None or "" means `DEFAULT_METHODS`.
    """
    names = _method_names(methods)
    unknown = [n for n in names if n not in METHOD_TABLE]
    if unknown:
        raise InputError(f"Unknown method '{str(unknown[0])[:40]}'. Choose from: {', '.join(METHOD_TABLE)}.")
    if not names:
        raise InputError(f"Choose at least one method from: {', '.join(METHOD_TABLE)}.")
    chosen = tuple(name for name in METHOD_TABLE if name in names)
    if points_from in (None, ""):
        return chosen, default_points_from(chosen)
    points = str(points_from).strip().lower()
    if points not in METHOD_TABLE:
        raise InputError(f"Unknown method '{points[:40]}' for the points. Choose from: {', '.join(METHOD_TABLE)}.")
    if points not in chosen:
        raise InputError(f"The points come from {method_title(points)}, which is not among the chosen methods; "
                         "add it, or take the points from one of them.")
    return chosen, points


def check_segmenter(methods: tuple[str, ...], segmenter: str | None) -> None:
    """An `InputError` when a proxy method (ProxyCLIP) is chosen without the segmenter it borrows its
    attention from: `segmenter` is None (SAM off), "sam" (SAM's ViT image encoder) or another family
    ("sam2.1": SAM 2.1, whose Hiera encoder is not the proxy the method was published with)."""
    proxied = [METHOD_TABLE[name].title for name in methods if name in METHOD_TABLE and METHOD_TABLE[name].proxy]
    if not proxied or segmenter == "sam":
        return
    if segmenter is None:
        raise InputError(f"{', '.join(proxied)} takes its attention from SAM's image encoder, so it needs SAM: "
                         "turn SAM on (drop --no-sam, or pick a SAM model), or leave it out.")
    raise InputError(f"{', '.join(proxied)} takes its attention from SAM's ViT image encoder (vit_b, vit_l or "
                     "vit_h); SAM 2.1's Hiera encoder is not an equivalent yet. Pick a vit_* SAM, or leave it out.")


def check_backbone(methods: tuple[str, ...], is_resnet: bool) -> None:
    """An `InputError` when a chosen method has no form for this backbone (the ViT-only ones on a ResNet)."""
    if not is_resnet:
        return
    refused = [METHOD_TABLE[name].title for name in methods if METHOD_TABLE[name].vit_only]
    if refused:
        raise InputError(f"{', '.join(refused)} work on ViT backbones only; with a ResNet choose CLIP and CLIP Surgery.")
