"""Measuring the pipeline benchmark: checkpoints, test images, memory, and timing one handler call.

Nothing here replaces or wraps an attribute of the engine or the app. Stage
times are the engine's own:

* `MapsResult.timings` (``clip_image``, ``text``, ``surgery``), read from the
  `SessionState` a Run yields (exact seconds);
* `Explanation.timings` (``points``, ``sam_image``, ``sam_decode``), read from the
  ``Time per stage`` line of the summary the handler returns (millisecond
  resolution), or from the `Explanation` itself where the benchmark calls
  `explorer.session.rerender` directly (exact);
* model calls are counted from the engine's ``surgery.calls`` log (one line per
  real encoder or decoder call; cache hits log nothing).

The one stage the engine does not time is Gradio's PNG postprocessing of the
galleries, which the benchmark does itself after a handler returns; it is timed
around that call (``ui_png``). Everything else a request spends (image decoding,
rendering, writing the files, glue) is what is left: ``other``.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests"):  # the engine, and tests/checkpoints.py (random SAM files)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

CACHE_DIR = Path(os.environ.get("CLIP_SURGERY_BENCH_CACHE", Path.home() / ".cache" / "clip-surgery-bench"))
CLIP_FILE = "clip_vit_b16_openai_layout_random_seed0.safetensors"
SAM_FILE = "sam_vit_b_random_seed0.pth"
TINY_CLIP = ROOT / "tests" / "data" / "parity" / "weights.safetensors"  # --smoke: the tests' small models
TINY_SAM = ROOT / "tests" / "data" / "sam_tiny.safetensors"

MAPS_STAGES = ("clip_image", "text", "surgery")  # MapsResult.timings
EXPLANATION_STAGES = ("points", "sam_image", "sam_decode")  # Explanation.timings beyond the maps'
RERENDER_STAGES = ("points", "sam_decode")  # what a threshold move really runs (the rest is the Run's)
MODEL_CALLS = {  # engine log message -> counter name
    "CLIP image encoder": "clip_image",
    "CLIP text encoder": "clip_text",
    "SAM image encoder": "sam_encoder",
    "SAM mask decoder": "sam_decoder",
}


# ----------------------------------------------------------------------------- checkpoints

def clip_checkpoint(cache: Path = CACHE_DIR) -> Path:
    """The random full-size OpenAI-layout ViT-B/16 (~600 MB) in `cache`, written on first use only."""
    path = cache / CLIP_FILE
    if path.is_file():
        return path
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from safetensors.torch import save_file

    from surgery.clip.architecture import read_clip_architecture

    print(f"writing random ViT-B/16 CLIP checkpoint to {path} …", flush=True)
    torch.manual_seed(0)
    model = CLIP(
        512,
        vision_cfg=CLIPVisionCfg(layers=12, width=768, patch_size=16, image_size=224),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=512, heads=8, layers=12),
        quick_gelu=True,
    )
    weights = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
    arch = read_clip_architecture(weights)
    got = (arch.vision_width, arch.vision_layers, arch.vision_patch_size, arch.image_size,
           arch.embed_dim, arch.text_width, arch.text_heads, arch.text_layers, arch.context_length, arch.vocab_size)
    expected = (768, 12, 16, 224, 512, 512, 8, 12, 77, 49408)
    if got != expected:
        raise SystemExit(f"read_clip_architecture read {got} back, expected {expected}")
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(weights, str(partial))
    partial.replace(path)
    return path


def sam_checkpoint(cache: Path = CACHE_DIR, size: str = "vit_b") -> Path:
    """The random full-size SAM `size` (vit_b ~375 MB, vit_h ~2.5 GB) in `cache`, in the layout of Meta's
    checkpoints."""
    path = cache / SAM_FILE.replace("vit_b", size)
    if path.is_file():
        return path
    from surgery.sam.architecture import VIT_B_ARCH, VIT_H_ARCH, VIT_L_ARCH

    from checkpoints import write_random_sam_checkpoint

    arch = {"vit_b": VIT_B_ARCH, "vit_l": VIT_L_ARCH, "vit_h": VIT_H_ARCH}[size]
    print(f"writing random SAM {size} checkpoint to {path} …", flush=True)
    partial = path.with_name(path.stem + ".partial.pth")
    write_random_sam_checkpoint(partial, arch, seed=0)
    partial.replace(path)
    return path


def prepared_checkpoints(cache: Path = CACHE_DIR, sam_size: str = "vit_b") -> tuple[Path, Path]:
    """(CLIP, SAM) full-size random checkpoints in `cache`. A child process writes missing ones, so the
    caller never imports torch or holds a model: the benchmark's workers would inherit that peak RSS
    (ru_maxrss survives fork and exec)."""
    clip_path, sam_path = cache / CLIP_FILE, cache / SAM_FILE.replace("vit_b", sam_size)
    if not (clip_path.is_file() and sam_path.is_file()):
        subprocess.run([sys.executable, str(Path(__file__).resolve()), str(cache), sam_size], check=True, cwd=ROOT)
    return clip_path, sam_path


def smoke_checkpoints() -> tuple[Path, Path]:
    """(CLIP, SAM) files of the tests' small random models, for a quick check that the benchmark runs."""
    for path in (TINY_CLIP, TINY_SAM):
        if not path.is_file():
            raise SystemExit(f"--smoke needs {path} (the tests' small checkpoint)")
    return TINY_CLIP, TINY_SAM


# ----------------------------------------------------------------------------- images

def make_image(seed: int, long_side: int = 0) -> Any:
    """A PIL image, as `gr.Image(type="pil")` hands it over: an asset photo (chosen by `seed`) with
    fresh ±3 noise, so its content hash is new; resized to `long_side` pixels when that is not 0."""
    import numpy as np
    from PIL import Image

    from surgery.images import load_image

    assets = sorted((ROOT / "assets").glob("*.jpg"))
    rgb = load_image(assets[seed % len(assets)])
    if long_side:
        height, width = rgb.shape[:2]
        scale = long_side / max(height, width)
        rgb = np.asarray(Image.fromarray(rgb).resize((round(width * scale), round(height * scale)), Image.LANCZOS))
    noise = np.random.default_rng(seed).integers(-3, 4, size=rgb.shape)
    return Image.fromarray(np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8))


def thresholds_for(state: Any, count: int) -> list[float]:
    """`count` slider positions a person might drag to on a `SessionState`: every label still found,
    its strongest points cut."""
    import numpy as np

    quantiles = np.linspace(0.995, 0.97, count)
    return [float(min(np.quantile(lm.parts["surgery"], q) for lm in state.maps.labels)) for q in quantiles]


# ----------------------------------------------------------------------------- memory

def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_now_mb() -> float:
    """This process's resident set size now, in MB."""
    return _proc_status_mb("VmRSS")


def memory() -> dict[str, float]:
    """Current RSS (and its anonymous / file-backed parts: shared libraries count as file) and peak RSS
    (``peak_rss_mb``: ru_maxrss, which a process inherits from its parent's RSS at fork; ``hwm_mb``:
    VmHWM, this process image's own peak), in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"rss_mb": round(rss_now_mb(), 1), "anon_mb": round(_proc_status_mb("RssAnon"), 1),
            "file_mb": round(_proc_status_mb("RssFile"), 1), "peak_rss_mb": round(peak, 1),
            "hwm_mb": round(_proc_status_mb("VmHWM"), 1)}


# ----------------------------------------------------------------------------- engine timings

class ModelCallCounter(logging.Handler):
    """Counts the engine's real model calls from its ``surgery.calls`` log (installed by `install`)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for text, name in MODEL_CALLS.items():
            if text in message:
                self.counts[name] += 1

    @classmethod
    def install(cls) -> ModelCallCounter:
        counter = cls()
        logger = logging.getLogger("surgery.calls")
        logger.setLevel(logging.INFO)
        logger.propagate = False  # counted here, not printed
        logger.addHandler(counter)
        return counter


class LogWatch(logging.Handler):
    """The first message on logger `name` that contains `text` (e.g. the model store's
    "default models … loaded and ready" once its start-up vocabulary warm-up is done)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(logging.INFO)
        self.text = text
        self.message: str | None = None
        self._seen = threading.Event()
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.text in message and not self._seen.is_set():
            self.message = message
            self._seen.set()

    def wait(self, timeout: float) -> str:
        """The message; `TimeoutError` when none came within `timeout` seconds."""
        if not self._seen.wait(timeout):
            raise TimeoutError(f"no log message with {self.text!r} within {timeout:.0f} s")
        return self.message or ""


def _page_index(name: str) -> int:
    from explorer.handlers import Handlers

    return (*Handlers.PAGE_OUTPUT_NAMES, "state").index(name)


DETAILS, STATE = _page_index("details"), _page_index("state")  # where a render's timings and Run's state are
_SUMMARY_TIMES = re.compile(r"^Time per stage: (.*)$", re.MULTILINE)


def summary_timings(summary: str) -> dict[str, float]:
    """Seconds per stage from the ``Time per stage: clip image 12 ms, …`` line of the page's summary
    (`explorer.page.summary_markdown` writes `Explanation.timings` there, in whole milliseconds)."""
    match = _SUMMARY_TIMES.search(summary or "")
    if match is None:
        raise ValueError("the summary has no 'Time per stage' line")
    seconds = {}
    for part in match.group(1).split(", "):
        name, value, unit = part.rsplit(" ", 2)
        if unit != "ms":
            raise ValueError(f"unexpected stage time {part!r} in the summary")
        seconds[name.replace(" ", "_")] = float(value) / 1000
    return seconds


def pick(timings: dict[str, float], names: tuple[str, ...]) -> dict[str, float]:
    return {name: float(timings[name]) for name in names if name in timings}


class GradioPostprocess:
    """Gradio's postprocessing of a render's image outputs (the PNG files it writes into its cache),
    done by the benchmark with the page's output component types, and timed as ``ui_png``."""

    def __init__(self) -> None:
        import gradio as gr

        with gr.Blocks():  # the page's only image output Gradio encodes: the masks overview (cards are files)
            self.components = [gr.AnnotatedImage(format="png")]

    def __call__(self, outputs: tuple) -> float:
        """Postprocess a handler's image outputs; returns the seconds it took."""
        start = time.perf_counter()
        for component, value in zip(self.components, outputs[:1]):
            if value is not None and not isinstance(value, dict):  # dict: a gr.update
                component.postprocess(value)
        return time.perf_counter() - start


class Meter:
    """Times handler calls. `extrapolated()` is a running total of seconds a call did not run but
    must be counted as if it had (the baseline's sampled text encoding); it is added to the
    call's times and to its ``text`` stage."""

    def __init__(self, ui: GradioPostprocess, calls: ModelCallCounter,
                 extrapolated: Callable[[], float] = lambda: 0.0) -> None:
        self.ui = ui
        self.calls = calls
        self.extrapolated = extrapolated

    def run(self, run: Callable[..., Iterator[tuple]], args: tuple) -> dict:
        """Drive a Run handler as Gradio does (first yield: heatmaps, second: masks; each yield's
        galleries postprocessed before the next part runs). Returns seconds to each yield
        (``first_s``, ``masks_s``, ``total_s``), the stages to the first yield and of the whole
        request, and the final `SessionState` (``state``, for later calls; not stored)."""
        calls_before, extra_before = self.calls.counts.copy(), self.extrapolated()
        start = time.perf_counter()
        generator = run(*args)
        first = next(generator)
        first_s = time.perf_counter() - start
        first_calls = self.calls.counts - calls_before
        first_ui = self.ui(first)
        second = next(generator)
        masks_s = time.perf_counter() - start
        second_ui = self.ui(second)
        total_s = time.perf_counter() - start
        for _ in generator:
            raise RuntimeError("run yielded more than twice")
        extra = self.extrapolated() - extra_before
        state = second[STATE]
        maps = pick(state.maps.timings, MAPS_STAGES)
        maps["text"] = maps.get("text", 0.0) + extra
        first_stages = {**maps, **pick(summary_timings(first[DETAILS]), ("points",))}
        stages = {**maps, **pick(summary_timings(second[DETAILS]), EXPLANATION_STAGES), "ui_png": first_ui + second_ui}
        return {"first_s": first_s + extra, "masks_s": masks_s + extra, "total_s": total_s + extra,
                "first_stages": {"seconds": first_stages, "calls": dict(first_calls)},
                "stages": {"seconds": stages, "calls": dict(self.calls.counts - calls_before)},
                "extrapolated_s": extra, "load1": os.getloadavg()[0], "state": state}

    def call(self, fn: Callable[..., Any], args: tuple, stages: Callable[[Any], dict[str, float]] | None = None,
             postprocess: bool = False) -> dict:
        """Time one plain call: ``s`` the call alone, ``total_s`` with Gradio's postprocessing of its
        outputs (`postprocess`); `stages(result)` reads the engine's stage seconds from what it returned."""
        calls_before, extra_before = self.calls.counts.copy(), self.extrapolated()
        start = time.perf_counter()
        result = fn(*args)
        seconds = time.perf_counter() - start
        ui_s = self.ui(result) if postprocess and result is not None else 0.0
        total_s = time.perf_counter() - start
        extra = self.extrapolated() - extra_before
        seconds_by_stage = dict(stages(result)) if stages is not None else {}
        if extra:
            seconds_by_stage["text"] = seconds_by_stage.get("text", 0.0) + extra
        if ui_s:
            seconds_by_stage["ui_png"] = ui_s
        return {"s": seconds + extra, "total_s": total_s + extra,
                "stages": {"seconds": seconds_by_stage, "calls": dict(self.calls.counts - calls_before)},
                "extrapolated_s": extra, "load1": os.getloadavg()[0], "result": result}


def rerender_stages(explanation: Any) -> dict[str, float]:
    """The stages of `explorer.session.rerender`'s `Explanation` that the move itself ran."""
    return pick(explanation.timings, RERENDER_STAGES)


def rethreshold_stages(outputs: tuple) -> dict[str, float]:
    """The stages of a rethreshold handler's outputs (from its summary) that the move itself ran."""
    return pick(summary_timings(outputs[DETAILS]), RERENDER_STAGES)


def full_request_stages(outputs: tuple) -> dict[str, float]:
    """All stages of a Run's last yield (the baseline's threshold move is a whole Run)."""
    return {**pick(outputs[STATE].maps.timings, MAPS_STAGES), **pick(summary_timings(outputs[DETAILS]), EXPLANATION_STAGES)}


def profile(call: Callable[[], Any], lines: int = 45) -> str:
    """A cProfile of one call, sorted by cumulative time (the top `lines` functions)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        call()
    finally:
        profiler.disable()
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("cumulative").print_stats(lines)
    return buffer.getvalue()


def strip(record: dict) -> dict:
    """A record without the live objects (state, handler outputs), ready for JSON."""
    return {k: v for k, v in record.items() if k not in ("state", "result")}


if __name__ == "__main__":  # python pipeline_instrumentation.py [CACHE_DIR [SAM]]: write the full-size checkpoints
    _cache = Path(sys.argv[1]) if len(sys.argv) > 1 else CACHE_DIR
    print(clip_checkpoint(_cache), sam_checkpoint(_cache, sys.argv[2] if len(sys.argv) > 2 else "vit_b"))
