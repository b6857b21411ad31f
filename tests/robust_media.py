"""Files for the robustness, concurrency and soak checks: every image format and mode the app
promises to read, broken and hostile files, and variants of the example assets.

Everything is generated (small, deterministic) so no binary fixture has to be committed.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
BASE = ASSETS / "chelsea.jpg"
SIZE = (120, 80)  # (width, height) of the ordinary format cases

# What a message shown to a person must never contain (a server's internals).
LEAKS = re.compile(r"Traceback|/tmp/|/work/|\.py\b|File \"")


def base_rgb(size: tuple[int, int] = SIZE) -> Image.Image:
    with Image.open(BASE) as image:
        return image.convert("RGB").resize(size, Image.BICUBIC)


def save(image: Image.Image, path: Path, **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **params)
    return path


# --- ordinary formats ----------------------------------------------------------------

def jpeg(folder: Path) -> Path:
    return save(base_rgb(), folder / "photo.jpg", quality=92)


def png(folder: Path) -> Path:
    return save(base_rgb(), folder / "photo.png")


def webp(folder: Path) -> Path:
    return save(base_rgb(), folder / "photo.webp", quality=90)


def bmp(folder: Path) -> Path:
    return save(base_rgb(), folder / "photo.bmp")


def tiff(folder: Path) -> Path:
    return save(base_rgb(), folder / "photo.tiff")


FIRST_FRAME_RGB = (255, 0, 0)
SECOND_FRAME_RGB = (0, 0, 255)


def animated_gif(folder: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """Two frames, frame 0 solid red and frame 1 solid blue: the app must use frame 0."""
    frames = [Image.new("RGB", size, FIRST_FRAME_RGB), Image.new("RGB", size, SECOND_FRAME_RGB)]
    path = folder / "animated.gif"
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=200, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 2
    return path


def gradient_8bit(size: tuple[int, int] = (128, 64)) -> np.ndarray:
    """A horizontal grey ramp 0..255 (uint8, H x W)."""
    width, height = size
    row = np.round(np.linspace(0, 255, width)).astype(np.uint8)
    return np.repeat(row[None, :], height, axis=0)


def png_16bit(folder: Path, size: tuple[int, int] = (128, 64)) -> tuple[Path, Path]:
    """A 16-bit grey ramp (mode I;16) and the same ramp as 8-bit L.

    The 16-bit values are v8 * 257, so a correct conversion (v16 / 65535 * 255) gives back
    exactly the 8-bit ramp, and both uploads must give the same pixels and the same result.
    """
    ramp8 = gradient_8bit(size)
    ramp16 = ramp8.astype(np.uint16) * 257
    image16 = Image.fromarray(ramp16)  # mode I;16
    assert image16.mode == "I;16", image16.mode
    path16 = save(image16, folder / "ramp16.png")
    with Image.open(path16) as check:
        assert check.mode in ("I;16", "I"), check.mode
    path8 = save(Image.fromarray(ramp8, mode="L"), folder / "ramp8.png")
    return path16, path8


def grayscale(folder: Path) -> Path:
    return save(base_rgb().convert("L"), folder / "gray.png")


def rgba_transparent(folder: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """Left half opaque red, right half fully transparent (black underneath): composited on
    white the right half must come out white, not black."""
    width, height = size
    pixels = np.zeros((height, width, 4), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0, 255)
    pixels[:, width // 2:] = (0, 0, 0, 0)
    return save(Image.fromarray(pixels, mode="RGBA"), folder / "alpha.png")


def cmyk_jpeg(folder: Path) -> Path:
    path = save(base_rgb().convert("CMYK"), folder / "cmyk.jpg", quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    return path


PALETTE_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def palette_png(folder: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """Mode P with four colours in four vertical bands."""
    width, height = size
    indices = np.repeat((np.arange(width) * 4 // width)[None, :], height, axis=0).astype(np.uint8)
    image = Image.fromarray(indices, mode="L").convert("P")
    image.putpalette([c for colour in PALETTE_COLOURS for c in colour] + [0, 0, 0] * 252)
    path = save(image, folder / "palette.png")
    with Image.open(path) as check:
        assert check.mode == "P"
    return path


def exif_rotated_jpeg(folder: Path, stored: tuple[int, int] = (96, 48)) -> Path:
    """Stored landscape (96x48) with EXIF orientation 6 (rotate 90° clockwise to display):
    displayed it is 48x96 portrait. The stored top-left quadrant is red, so displayed the
    red block is at the top-right."""
    width, height = stored
    pixels = np.full((height, width, 3), 40, dtype=np.uint8)
    pixels[: height // 2, : width // 2] = (255, 0, 0)
    image = Image.fromarray(pixels, mode="RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(image, folder / "rotated.jpg", exif=exif.tobytes(), quality=95)


# --- broken and hostile files --------------------------------------------------------

def truncated_jpeg(folder: Path) -> Path:
    buffer = io.BytesIO()
    base_rgb((400, 300)).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    path = folder / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    return path


def zero_bytes(folder: Path) -> Path:
    path = folder / "empty.png"
    path.write_bytes(b"")
    return path


def text_as_png(folder: Path) -> Path:
    path = folder / "notes.png"
    path.write_text("this is not an image\n" * 20)
    return path


def huge_png(folder: Path, size: tuple[int, int] = (8000, 6000)) -> Path:
    """48 MP of one colour: a few kB on disk, 144 MB as RGB once decoded."""
    path = folder / f"huge-{size[0]}x{size[1]}.png"
    return path if path.exists() else save(Image.new("1", size, 1), path)


def tiny_image(folder: Path) -> Path:
    return save(Image.new("RGB", (4, 4), (200, 30, 30)), folder / "tiny.png")


# --- variants for concurrency and soak -----------------------------------------------

def asset_variants(folder: Path) -> list[Path]:
    """Each example asset as-is plus a resized and a flipped copy (distinct sizes)."""
    out = []
    for index, asset in enumerate(sorted(ASSETS.glob("*.jpg"))):
        out.append(asset)
        with Image.open(asset) as image:
            rgb = image.convert("RGB")
            w, h = rgb.size
            small = rgb.resize((max(16, w // 2 - index), max(16, h // 2 + index)), Image.BILINEAR)
            out.append(save(small, folder / f"{asset.stem}-small.png"))
            flipped = rgb.transpose(Image.FLIP_LEFT_RIGHT).resize((w // 3 + 7 * index + 1, h // 3 + 1))
            out.append(save(flipped, folder / f"{asset.stem}-flip.jpg", quality=90))
    return out


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied)."""
    from PIL import ImageOps

    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


# --- reading what /explain returns ---------------------------------------------------

def result_json(outputs) -> dict:
    """result.json's content: /explain's first output."""
    assert isinstance(outputs[0], dict), outputs
    return outputs[0]


def summary(outputs) -> str:
    return outputs[1]


def gallery_captions(outputs, kinds: tuple[str, ...] = ("CLIP", "CLIP Surgery", "Points", "SAM")) -> list[str]:
    """Captions of the overlay images (/explain with include_files=True), of the given kinds."""
    return [item["caption"] for item in outputs[3] if item["caption"].split(" · ", 1)[0] in kinds]


def points_images(outputs) -> list[np.ndarray]:
    """The 'Points' overlays as RGB arrays (PNG, lossless; /explain with include_files=True). With no
    points drawn (every label not found) each one is exactly the image the server decoded."""
    return [np.asarray(Image.open(item["image"]).convert("RGB")) for item in outputs[3]
            if item["caption"].startswith("Points · ")]


def call_explain_raw(http, base: str, body: str) -> tuple[bool, object, str]:
    """POST a hand-written JSON body to /gradio_api/call/explain and read the event stream to its end:
    (succeeded, output data or error message, the whole stream)."""
    started = http.post(f"{base}/gradio_api/call/explain", content=body, headers={"content-type": "application/json"})
    started.raise_for_status()
    event_id = started.json()["event_id"]
    with http.stream("GET", f"{base}/gradio_api/call/explain/{event_id}") as stream:
        text = "".join(stream.iter_text())
    event = re.findall(r"^event: (\w+)", text, re.MULTILINE)[-1]
    data = json.loads(re.findall(r"^data: (.*)$", text, re.MULTILINE)[-1])
    if event == "complete":
        return True, data, text
    message = data.get("error") if isinstance(data, dict) else data
    return False, "" if message is None else str(message), text
