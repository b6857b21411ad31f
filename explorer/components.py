"""Gradio components whose input handling answers bad input with a message instead of an error page."""

from __future__ import annotations

import logging

import gradio as gr
import PIL.Image

from surgery.errors import UserError
from surgery.images import MAX_PIXELS, check_pixel_count

log = logging.getLogger(__name__)


def upload_problem(path: str | None) -> str | None:
    """Why an uploaded file cannot be used, from its header alone (nothing is decoded), or None."""
    if not path:
        return None
    try:
        with PIL.Image.open(path) as header:
            check_pixel_count(*header.size)
    except UserError as exc:
        return str(exc)
    except PIL.Image.DecompressionBombError:  # PIL's own header check, above 2 * MAX_IMAGE_PIXELS
        return f"The image has more than {MAX_PIXELS / 1e6:.0f} megapixels, the limit. Downscale it and try again."
    except Exception:
        return "This file is not an image this app can read. Use a JPEG, PNG, WebP, GIF, BMP or TIFF file."
    return None


class SafeImage(gr.Image):
    """gr.Image whose upload handling answers bad files with a message instead of an error page.

    The pixel count is read from the header before anything is decoded (decompression bombs).
    With `image_mode=None` Gradio hands over the lazily opened image in its own mode (16-bit,
    CMYK, palette, alpha...) and `surgery.images.load_image` converts it correctly.
    """

    is_template = True  # rendered by the frontend's own Image component

    def preprocess(self, payload):
        if payload is not None and not getattr(payload, "path", None):  # a URL alone: nothing is fetched
            raise gr.Error("Send the image itself as an uploaded file; a URL is not fetched.", print_exception=False)
        problem = upload_problem(getattr(payload, "path", None)) if payload is not None else None
        if problem is not None:
            raise gr.Error(problem, print_exception=False)
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception:
            log.warning("image preprocessing failed", exc_info=True)
            raise gr.Error("This image is truncated or corrupt. Re-export or re-download it and try again.",
                           print_exception=False) from None


class MethodsGroup(gr.CheckboxGroup):
    """gr.CheckboxGroup for the methods: a comma-separated text (which the API documents) goes on to
    `surgery.clip.methods.check_methods`, and a value that is neither is refused with a message (Gradio's own
    check fails on it with no message at all)."""

    is_template = True  # rendered by the frontend's own CheckboxGroup component

    def preprocess(self, payload):
        if payload is None or isinstance(payload, str):
            return payload
        if not isinstance(payload, list):
            raise gr.Error(f"Methods must be a list of names from: {', '.join(v for _, v in self.choices)}.",
                           print_exception=False)
        return super().preprocess(payload)


class ChoiceDropdown(gr.Dropdown):
    """gr.Dropdown whose refusal of a value that is not a choice stays short: Gradio's own message repeats
    the value, however long it is."""

    is_template = True  # rendered by the frontend's own Dropdown component

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            if len(repr(payload)) <= 80:
                raise
            raise gr.Error(f"{self.label}: '{str(payload)[:40]}…' is not one of the choices: "
                           f"{', '.join(str(v) for _, v in self.choices)}.", print_exception=False) from None


class ThresholdSlider(gr.Slider):
    """gr.Slider whose value is checked by `surgery.method.threshold.check_threshold`, not by Gradio's
    bounds: the page narrows the slider per session, and Gradio would then refuse a later API request
    above that narrowed maximum, and answer a value that is not a number with no message at all."""

    is_template = True  # rendered by the frontend's own Slider component

    def preprocess(self, payload):
        return payload
