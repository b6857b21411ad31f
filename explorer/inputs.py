"""What the page and the API send, checked and turned into engine input (no Gradio here)."""

from __future__ import annotations

from pathlib import Path

from surgery.errors import UserError
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
