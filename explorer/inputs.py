"""What the page and the API send, checked and turned into engine input (no Gradio here)."""

from __future__ import annotations

from pathlib import Path

from surgery.clip.vit import MAX_RESOLUTION, MIN_RESOLUTION
from surgery.errors import InputError, UserError
from surgery.images import WorkingImage, fit_long_side, load_image


def image_array(image) -> WorkingImage:
    """The uploaded image decoded, and scaled down when larger than the working size."""
    if image is None:
        raise UserError("Upload an image first (or pick an example below).")
    return fit_long_side(load_image(image))


def image_file_name(image) -> str:
    """The uploaded file's own name where the browser sent one (coco.json refers to it)."""
    name = Path(getattr(image, "filename", "") or "image.png").name
    return name or "image.png"


def check_resolution_choice(resolution, patch_size: int) -> tuple[int, str | None]:
    """Snap a requested resolution to the nearest usable multiple of the patch size."""
    try:
        requested = int(float(resolution))
    except (TypeError, ValueError, OverflowError):
        raise InputError("Resolution must be a whole number of pixels, e.g. 512.") from None
    if not MIN_RESOLUTION <= requested <= MAX_RESOLUTION:
        raise InputError(f"Resolution must be between {MIN_RESOLUTION} and {MAX_RESOLUTION} pixels.")
    snapped = round(requested / patch_size) * patch_size  # nearest multiple, then a step inwards if outside
    while snapped < MIN_RESOLUTION:
        snapped += patch_size
    while snapped > MAX_RESOLUTION:
        snapped -= patch_size
    note = None if snapped == requested else (
        f"Resolution {requested} is not a multiple of this backbone's patch size {patch_size}; used {snapped}.")
    return snapped, note
