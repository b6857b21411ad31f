"""Changes to Gradio's own behaviour, applied once at start-up by `apply()` (never on import)."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image

from surgery.images import MAX_PIXELS
from surgery.output.png import encode_png


def save_pil_to_cache_atomic(img, cache_dir, name="image", format="webp"):
    """gradio.processing_utils.save_pil_to_cache without its race: the cache is content-hashed, so a
    file already there is left alone, and a new one appears atomically. Gradio's own version truncates
    and rewrites it in place, cutting short any download of the same file in progress (identical
    outputs of two requests, or a gallery yielded before and after SAM). PNGs are encoded with
    `encode_png`, several times faster than PIL's default: Gradio encodes every gallery image of
    every yield."""
    if format == "png" and img.mode in ("RGB", "RGBA", "L"):
        data = encode_png(np.asarray(img))
    else:
        data = gr.processing_utils.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / gr.processing_utils.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    target = (folder / f"{name}.{format}").resolve()
    if not target.exists():
        fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(staging, target)
    return str(target)


def apply() -> None:
    """Install the atomic image cache writer and PIL's second decompression-bomb guard."""
    gr.processing_utils.save_pil_to_cache = save_pil_to_cache_atomic
    # PIL refuses images over twice this many pixels when it reads the header: a second guard
    # behind SafeImage's own check, for anything else that might open an uploaded image.
    PIL.Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
    warnings.filterwarnings("ignore", category=PIL.Image.DecompressionBombWarning)
