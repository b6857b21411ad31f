"""The benchmark datasets as a table: where images and ground truth lie, how labels are read, and each
dataset's standard protocol values (docs/evaluation.md, the dataset table; SCLIP's `configs/cfg_*.py`).

A sample is named by its id: the line of the id list, or, for a scanned folder, the image's path
relative to the image folder without its suffix (`frankfurt/frankfurt_000000_000294` for Cityscapes).
Image and label paths follow from (dataset, root, id) alone, so a worker needs only the id.
Ground truth is read as palette/grey indices (never converted to RGB); `reduce_zero_label` turns
0 into 255 (ignored) and lowers every other value by one, 255 staying 255, as mmseg does on load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError
from ..images import IMAGE_SUFFIXES
from .classes import IGNORE_INDEX


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: layout, label handling and standard protocol values.

    `id_list` None: the image folder is scanned (sorted paths; `recursive` into sub-folders) for files
    ending in `image_suffix`. `has_background`: class 0 is a background class (what the probability
    rule assigns, and what `--sam` leaves where no mask covers a pixel).
    """

    key: str
    title: str
    mmseg_type: str
    classes_file: str | None  # packaged class file; None: --classes is required
    image_dir: str
    image_suffix: str  # "" for `folder`: any image suffix
    label_dir: str
    label_suffix: str
    id_list: str | None
    recursive: bool
    reduce_zero_label: bool
    has_background: bool
    short_side: int
    long_side: int = 2048
    logit_scale: float = 40.0
    prob_threshold: float = 0.0
    area_threshold: float | None = None
    expected_images: int | None = None  # the official split's size (a note when a run sees another count)

    def image_path(self, root: Path, sample_id: str) -> Path:
        if not self.image_suffix:  # folder: whichever image file has this stem
            matches = sorted(p for p in (root / self.image_dir).glob(f"{_glob_escape(sample_id)}.*")
                             if p.suffix.lower() in IMAGE_SUFFIXES)
            return matches[0] if matches else root / self.image_dir / f"{sample_id}.jpg"
        return root / self.image_dir / f"{sample_id}{self.image_suffix}"

    def label_path(self, root: Path, sample_id: str) -> Path:
        return root / self.label_dir / f"{sample_id}{self.label_suffix}"


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


_VOC = dict(image_dir="JPEGImages", image_suffix=".jpg", label_dir="SegmentationClass", label_suffix=".png",
            id_list="ImageSets/Segmentation/val.txt", recursive=False)
_CONTEXT = dict(image_dir="JPEGImages", image_suffix=".jpg", label_dir="SegmentationClassContext",
                label_suffix=".png", id_list="ImageSets/SegmentationContext/val.txt", recursive=False)
_COCO = dict(image_dir="images/val2017", image_suffix=".jpg", label_dir="annotations/val2017", id_list=None,
             recursive=False)

DATASETS: dict[str, DatasetSpec] = {
    "voc21": DatasetSpec("voc21", "PASCAL VOC 2012 (with background)", "PascalVOCDataset", "cls_voc21.txt",
                         **_VOC, reduce_zero_label=False, has_background=True, short_side=336, logit_scale=65,
                         prob_threshold=0.1, area_threshold=0.1, expected_images=1449),
    "voc20": DatasetSpec("voc20", "PASCAL VOC 2012 (without background)", "PascalVOC20Dataset", "cls_voc20.txt",
                         **_VOC, reduce_zero_label=True, has_background=False, short_side=336,
                         expected_images=1449),
    "context60": DatasetSpec("context60", "PASCAL Context (with background)", "PascalContext60Dataset",
                             "cls_context60.txt", **_CONTEXT, reduce_zero_label=False, has_background=True,
                             short_side=336, logit_scale=50, prob_threshold=0.1, expected_images=5105),
    "context59": DatasetSpec("context59", "PASCAL Context (without background)", "PascalContext59Dataset",
                             "cls_context59.txt", **_CONTEXT, reduce_zero_label=True, has_background=False,
                             short_side=336, expected_images=5105),
    "coco_object": DatasetSpec("coco_object", "COCO-Object", "COCOObjectDataset", "cls_coco_object.txt", **_COCO,
                               label_suffix="_instanceTrainIds.png", reduce_zero_label=False,
                               has_background=True, short_side=336, logit_scale=50, prob_threshold=0.1,
                               expected_images=5000),
    "coco_stuff": DatasetSpec("coco_stuff", "COCO-Stuff 164k", "COCOStuffDataset", "cls_coco_stuff.txt", **_COCO,
                              label_suffix="_labelTrainIds.png", reduce_zero_label=False, has_background=False,
                              short_side=448, expected_images=5000),
    "cityscapes": DatasetSpec("cityscapes", "Cityscapes", "CityscapesDataset", "cls_city_scapes.txt",
                              image_dir="leftImg8bit/val", image_suffix="_leftImg8bit.png", label_dir="gtFine/val",
                              label_suffix="_gtFine_labelTrainIds.png", id_list=None, recursive=True,
                              reduce_zero_label=False, has_background=False, short_side=560, expected_images=500),
    "ade20k": DatasetSpec("ade20k", "ADE20K", "ADE20KDataset", "cls_ade20k.txt", image_dir="images/validation",
                          image_suffix=".jpg", label_dir="annotations/validation", label_suffix=".png", id_list=None,
                          recursive=False, reduce_zero_label=True, has_background=False, short_side=336,
                          expected_images=2000),
    # A person's own data: ROOT/images/<stem>.<any image suffix>, ROOT/masks/<stem>.png, --classes FILE.
    "folder": DatasetSpec("folder", "Own folder", "(none)", None, image_dir="images", image_suffix="",
                          label_dir="masks", label_suffix=".png", id_list=None, recursive=False,
                          reduce_zero_label=False, has_background=False, short_side=336),
}


def check_dataset(name: str) -> DatasetSpec:
    spec = DATASETS.get(str(name).strip().lower())
    if spec is None:
        raise InputError(f"Unknown dataset '{str(name)[:40]}'. Choose from: {', '.join(DATASETS)}.")
    return spec


def sample_ids(spec: DatasetSpec, root: Path) -> list[str]:
    """The ids to evaluate, in the harness's order: the id list's lines, or the sorted scan; an
    `InputError` naming what is missing when `root` does not have the dataset's layout."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give the dataset's root folder.")
    if spec.id_list is not None:
        listing = root / spec.id_list
        if not listing.is_file():
            raise InputError(f"{root} has no {spec.id_list}: it does not look like {spec.title} "
                             f"(expected {spec.image_dir}/, {spec.label_dir}/ and {spec.id_list}).")
        ids = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        folder = root / spec.image_dir
        if not folder.is_dir():
            raise InputError(f"{root} has no {spec.image_dir}/ folder: it does not look like {spec.title} "
                             f"(expected {spec.image_dir}/ and {spec.label_dir}/).")
        ids = _scan(spec, folder)
    if not ids:
        raise InputError(f"No images to evaluate in {root} ({spec.title}).")
    for sample in ids:  # ids name output files: never a path out of the output folder
        if sample.startswith(("/", "\\")) or ".." in sample.replace("\\", "/").split("/"):
            raise InputError(f"The id {sample[:60]!r} in {spec.id_list or spec.image_dir} is not a plain name.")
    return ids


def _scan(spec: DatasetSpec, folder: Path) -> list[str]:
    files = folder.rglob("*") if spec.recursive else folder.iterdir()
    ids = []
    for path in sorted(files):  # sorted path order, as mmseg sorts its scanned data list
        if not path.is_file():
            continue
        if spec.image_suffix:
            if path.name.endswith(spec.image_suffix):
                ids.append(path.relative_to(folder).as_posix()[: -len(spec.image_suffix)])
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            ids.append(path.relative_to(folder).with_suffix("").as_posix())
    if not spec.image_suffix and len(set(ids)) != len(ids):
        repeated = next(sample for index, sample in enumerate(ids) if sample in ids[:index])
        raise InputError(f"Two images share the name {repeated!r} in {folder}; give each image its own stem.")
    return ids


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's `reduce_zero_label`: 0 -> 255 (ignored), v -> v - 1 otherwise, 255 stays 255."""
    reduced = label.astype(np.int64) - 1
    reduced[label == 0] = IGNORE_INDEX
    reduced[label == IGNORE_INDEX] = IGNORE_INDEX
    return reduced.astype(np.uint8)


def read_label(path: Path, reduce_zero: bool) -> np.ndarray:
    """The ground truth as class indices (H, W) uint8 from a palette or grey PNG; an `InputError` for a
    missing or unreadable file or an RGB mask (whose colours are not class indices)."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise InputError(f"The mask {path.name} is a {mode} image; masks must hold class indices "
                                 "(a palette or greyscale PNG), not colours.")
            label = np.array(image)
    except FileNotFoundError:
        raise InputError(f"No ground truth for this image: {path} is missing.") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"The mask {path.name} could not be read ({type(exc).__name__}).") from None
    if label.ndim != 2:
        raise InputError(f"The mask {path.name} has shape {label.shape}; expected height x width.")
    if label.dtype != np.uint8:
        if label.min() < 0 or label.max() > IGNORE_INDEX:
            raise InputError(f"The mask {path.name} holds values outside 0..255.")
        label = label.astype(np.uint8)
    return reduce_zero_label(label) if reduce_zero else label
