"""What an explanation looks like on disk: result.json, maps.npz and PNG overlays.

The CLI writes these per image; the app zips the same files for download, so
both give byte-for-byte the same schema.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Callable, Hashable

import numpy as np

from ..method.maps import resize_map
from ..method.scoring import TruthMask, truth_scores
from ..method.table import METHOD_TABLE, method_title
from ..method.views import Explanation, LabelView
from . import coco
from .drawing import draw_mask, draw_masks_legend, draw_points, heat_overlay, palette
from .histogram import histogram_image
from .png import PngMemo, encode_png


_SLUG_OK = re.compile(r"[^a-z0-9_+.-]")


def label_slug(label: str) -> str:
    """A safe file-name fragment for a label, at most 60 characters, never empty.

    Kept as is when it is already lower-case `[a-z0-9_+.-]`, not starting with
    '.' or '-', without '..', and short; otherwise the cleaned text gets
    '-' and 8 hex digits of the label's SHA-1, so that distinct labels (even
    differing only in case, for case-insensitive file systems) stay distinct.
    """
    label = str(label)
    slug = _SLUG_OK.sub("_", label.lower())
    slug = re.sub(r"\.{2,}", "_", slug)
    slug = re.sub(r"^[.-]|\.$", "_", slug)
    if slug == label and 0 < len(slug) <= 60:
        return slug
    digest = hashlib.sha1(label.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    base = re.sub(r"_{2,}", "_", slug).strip("_")[:51].rstrip("._-") or "label"
    base = re.sub(r"^[.-]", "_", base)
    return f"{base}-{digest}"


def map_overlay_name(method: str, label: str) -> str:
    """The file name of one method's heatmap overlay for a label: `<method>_<label>.png`."""
    return f"{method}_{label_slug(label)}.png"


def overlay_names(label: str, methods: tuple[str, ...]) -> tuple[str, ...]:
    """File names of a label's heatmap overlays (one per method) and its points overlay (what the
    page's cards show besides the mask)."""
    return (*(map_overlay_name(method, label) for method in methods), f"points_{label_slug(label)}.png")


_POINT_ROW = re.compile(r"\[\s+(-?\d+),\s+(-?\d+),\s+(-?\d+)\s+\]")


def format_result_json(result: dict) -> bytes:
    """Indented JSON with each point kept on one line ([x, y, label])."""
    text = json.dumps(result, indent=2, ensure_ascii=False)
    return _POINT_ROW.sub(r"[\1, \2, \3]", text).encode("utf-8")


def _mask_fields(mask: np.ndarray | None, score: float | None) -> dict:
    if mask is None:
        return {"mask_score": None, "mask_area": None}
    return {"mask_score": round(float(score), 6), "mask_area": int(mask.sum())}


def label_record(view: LabelView) -> dict:
    record = {
        "label": view.text,
        "found": bool(view.found),
        "points": [[int(x), int(y), int(lab)] for x, y, lab in view.points],
        "presence": round(float(view.maps.presence), 6),
        **_mask_fields(view.chosen_mask, view.chosen_score),
    }
    if view.mask is not None:
        record["mask_choice"] = int(view.chosen)
        record["mask_candidates"] = [
            {"score": round(float(score), 6), "area": int(candidate.sum())}
            for candidate, score in zip(view.mask.candidates, view.mask.scores)
        ]
    if view.instances:
        record["instances"] = [
            {"points": [[int(x), int(y), int(lab)] for x, y, lab in inst.points],
             **_mask_fields(None if inst.mask is None else inst.mask.mask,
                            None if inst.mask is None else inst.mask.score),
             "box": None if inst.mask is None else coco.mask_box(inst.mask.mask)}
            for inst in view.instances
        ]
    return record


def _point_lists(pairs) -> dict:
    return {label: [list(row) for row in rows] for label, rows in pairs}


def result_json(explanation: Explanation, *, model: str, sam_model: str | None,
                notes: tuple[str, ...] | list[str] = (), source_size: tuple[int, int] | None = None,
                truth: TruthMask | None = None) -> dict:
    """`width`/`height` (and every point) are the pixels worked on; `source_width`/`source_height`
    the decoded image's, larger when it was scaled down (`source_size` = (height, width)).
    `extra_points` are a person's points per label (part of each label's `points`), `removed_points`
    (only when some) derived points a person took away; `truth` (with a truth mask) scores each map's
    region and the SAM mask against it (`surgery.method.scoring.truth_scores`)."""
    maps = explanation.maps
    source_height, source_width = source_size or (maps.height, maps.width)
    options = explanation.point_options
    edits = {"extra_points": _point_lists(options.extra_points)}
    if options.removed_points:
        edits["removed_points"] = _point_lists(options.removed_points)
    if truth is not None:
        edits["truth"] = truth_scores(explanation, truth, with_masks=sam_model is not None)
    return {
        "width": maps.width,
        "height": maps.height,
        "source_width": source_width,
        "source_height": source_height,
        "labels": [label_record(view) for view in explanation.labels],
        "model": model,
        "sam_model": sam_model,
        "resolution": maps.options.resolution,
        "precision": maps.options.precision,  # the image encoders' (bf16 is the GPU default)
        "redundancy": maps.options.redundancy,
        "methods": list(maps.options.methods),
        "points_from": maps.options.points_from,
        "threshold": explanation.threshold,
        "instances": explanation.point_options.instances,
        "positive_only": explanation.point_options.positive_only,
        **edits,
        "notes": list(notes),
    }


def maps_arrays(explanation: Explanation, with_masks: bool) -> dict[str, np.ndarray]:
    """One raw (K, g, g) float32 array per method computed, named after it; `masks` (K, H, W) with SAM."""
    maps = explanation.maps
    arrays = {method: np.stack([lm.maps[method] for lm in maps.labels]).astype(np.float32)
              for method in maps.options.methods}
    if with_masks:
        empty = np.zeros((maps.height, maps.width), dtype=bool)
        arrays["masks"] = np.stack([v.chosen_mask if v.chosen_mask is not None else empty
                                    for v in explanation.labels])
    return arrays


Drawing = tuple[str, Hashable, Callable[[], np.ndarray]]


def _digest(array: np.ndarray) -> tuple:
    """A short content key for an array (shape, dtype and bytes)."""
    array = np.ascontiguousarray(array)
    return array.shape, array.dtype.str, hashlib.blake2b(array.data, digest_size=16).digest()


def overlay_drawings(image_rgb: np.ndarray, explanation: Explanation, with_masks: bool) -> list[Drawing]:
    """(file name, key, draw) for every overlay PNG: `draw()` makes the RGB image, and `key` names
    everything it depends on besides `image_rgb`, so equal keys on one image draw equal pictures."""
    height, width = image_rgb.shape[:2]
    drawings: list[Drawing] = []

    def heat(display: np.ndarray) -> Drawing:
        return ("heat", _digest(display)), lambda: heat_overlay(image_rgb, resize_map(display, height, width))

    methods = explanation.maps.options.methods
    for view in explanation.labels:
        *map_names, points_name = overlay_names(view.text, methods)
        for method, name in zip(methods, map_names):
            drawings.append((name, *heat(view.displays[method])))
        drawings.append((points_name, ("points", _digest(view.points), _digest(view.added)),
                         functools.partial(draw_points, image_rgb, view.points, marked=view.added)))
    if with_masks:
        colours = palette(len(explanation.labels))
        for view, colour in zip(explanation.labels, colours):
            if view.chosen_mask is not None:
                slug = label_slug(view.text)
                mask_key = _digest(view.chosen_mask)
                drawings.append((f"sam_{slug}.png", ("sam", mask_key, _digest(view.points), _digest(view.added), colour),
                                 functools.partial(draw_mask, image_rgb, view.chosen_mask, view.points, colour,
                                                   marked=view.added)))
                drawings.append((f"mask_{slug}.png", ("mask", mask_key),
                                 functools.partial(binary_mask_image, view.chosen_mask)))
                for number, inst in enumerate(view.instances, start=1):
                    if inst.mask is not None:
                        drawings.append((f"mask_{slug}_{number}.png", ("mask", _digest(inst.mask.mask)),
                                         functools.partial(binary_mask_image, inst.mask.mask)))
        names, masks = mask_layers(explanation)
        legend_key = ("legend", tuple(names), tuple(None if m is None else _digest(m) for m in masks))
        drawings.append(("masks.png", legend_key, functools.partial(draw_masks_legend, image_rgb, masks, names)))
    return drawings


def overlay_images(image_rgb: np.ndarray, explanation: Explanation, with_masks: bool) -> dict[str, np.ndarray]:
    """File name -> RGB image, for every PNG the CLI writes."""
    return {name: draw() for name, _, draw in overlay_drawings(image_rgb, explanation, with_masks)}


def mask_layers(explanation: Explanation) -> tuple[list[str], list[np.ndarray | None]]:
    """One legend entry per label, or per instance (numbered) when instances are split."""
    names: list[str] = []
    masks: list[np.ndarray | None] = []
    for view in explanation.labels:
        if view.instances:
            for number, inst in enumerate(view.instances, start=1):
                names.append(f"{view.text} #{number}")
                masks.append(None if inst.mask is None else inst.mask.mask)
        else:
            names.append(view.text)
            masks.append(view.chosen_mask)
    return names, masks


def binary_mask_image(mask: np.ndarray) -> np.ndarray:
    """White-on-black RGB image of a mask (what the zip's mask PNGs hold)."""
    return np.repeat((np.asarray(mask, dtype=np.uint8) * 255)[:, :, None], 3, axis=2)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def output_files(image_rgb: np.ndarray, explanation: Explanation, result: dict, with_masks: bool,
                 coco_file_name: str | None = None, memo: PngMemo | None = None) -> dict[str, bytes]:
    """Every output file's name and bytes (result.json, maps.npz, the overlays and histograms);
    `coco_file_name` adds coco.json for that image file, whose size result["source_width"/"source_height"]
    gives."""
    files = {
        "result.json": format_result_json(result),
        "maps.npz": _npz_bytes(maps_arrays(explanation, with_masks)),
    }
    if coco_file_name is not None:
        document = coco.coco_document(explanation, coco_file_name, (result["source_height"], result["source_width"]))
        files["coco.json"] = json.dumps(document, ensure_ascii=False).encode("utf-8")
    files.update(overlay_pngs(image_rgb, explanation, with_masks, memo))
    for name, key, draw in histogram_drawings(explanation):
        files[name] = encode_png(draw()) if memo is None else memo.png(key, draw)
    return files


def histogram_drawings(explanation: Explanation) -> list[Drawing]:
    """(file name, key, draw) of each label's histogram of the raw values its points come from, threshold
    marked."""
    title = method_title(explanation.maps.options.points_from)
    return [(f"hist_{label_slug(view.text)}.png", ("hist", _digest(view.maps.point_parts), explanation.threshold),
             functools.partial(histogram_image, view.maps.point_parts, explanation.threshold,
                               title=f"raw {title} · {view.text}"))
            for view in explanation.labels]


def overlay_pngs(image_rgb: np.ndarray, explanation: Explanation, with_masks: bool,
                 memo: PngMemo | None = None) -> dict[str, bytes]:
    """`overlay_images`, PNG-encoded (through `memo` when given): what the page shows and the zip
    holds are the same files."""
    drawings = overlay_drawings(image_rgb, explanation, with_masks)
    if memo is None:
        return {name: encode_png(draw()) for name, _, draw in drawings}
    return {name: memo.png(key, draw) for name, key, draw in drawings}


def explanation_files(image_rgb: np.ndarray, explanation: Explanation, *, model: str, sam_model: str | None,
                      notes: tuple[str, ...] | list[str] = (), source_size: tuple[int, int] | None = None,
                      coco_file_name: str | None = None, memo: PngMemo | None = None,
                      truth: TruthMask | None = None, with_files: bool = True) -> tuple[dict, dict[str, bytes]]:
    """result.json's content and every output file of one explanation (the one recipe the CLI, calibrate,
    the public API and the app's downloads share). Masks are included when `sam_model` names the SAM
    whose masks `explanation` holds; `coco_file_name` adds coco.json for that image file; `truth` adds
    the scores against that ground-truth mask (at the working image's size). `with_files=False` makes
    the result only (no file drawn or encoded: an API call that asks for the numbers alone)."""
    result = result_json(explanation, model=model, sam_model=sam_model, notes=notes, source_size=source_size,
                         truth=truth)
    if not with_files:
        return result, {}
    files = output_files(image_rgb, explanation, result, with_masks=sam_model is not None,
                         coco_file_name=coco_file_name, memo=memo)
    return result, files


def _output_name_pattern() -> re.Pattern:
    kinds = "|".join(re.escape(kind) for kind in (*METHOD_TABLE, "points", "sam", "mask", "hist"))
    return re.compile(rf"(result\.json|maps\.npz|coco\.json|masks\.png|({kinds})_.+\.png)")


OUTPUT_NAME = _output_name_pattern()  # every name `output_files` can give a file


def write_files(directory: Path, files: dict[str, bytes]) -> None:
    """Write one explanation's files into `directory`, first removing any earlier explanation's files
    there (named as `output_files` names them), so that the folder holds only this explanation's:
    a mask of a label not found now does not survive from an earlier run. Other files are left alone."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.iterdir():
        if path.name not in files and OUTPUT_NAME.fullmatch(path.name) and path.is_file():
            path.unlink()
    for name, payload in files.items():
        (directory / name).write_bytes(payload)


def zip_outputs(files: dict[str, bytes]) -> bytes:
    """The files as one zip: PNGs (and the already compressed npz) stored, text deflated.

    Deflating PNG data again gains nothing and costs time on every Run.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in files.items():
            packed = name.endswith((".png", ".npz"))
            archive.writestr(name, payload, compress_type=zipfile.ZIP_STORED if packed else zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
