"""Starting the app: options (flags and environment), the model store, Gradio's patches, launch."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

from surgery.clip.text_store import default_text_cache_dir
from surgery.device import DEVICE_CHOICES
from surgery.memory import configure_server_allocator
from surgery.hub.registry import CLIP_CHECKPOINTS, DEFAULT_CLIP, SAM_CHECKPOINTS

from .gpu import on_zero_gpu
from .model_store import ModelConfig, ModelStore

MAX_FILE_SIZE = "20mb"
OUTPUT_DIR = Path(os.environ.get("CLIP_SURGERY_OUTPUT_DIR") or Path(tempfile.gettempdir()) / "clip-surgery-explorer")
SESSION_CAPACITY = 24  # sessions whose state is kept at once: 10-20 MB each typical, ~55 MB at most (README Limits)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Start the CLIP Surgery Explorer web app.")
    parser.add_argument("--model", default=env("CLIP_MODEL", DEFAULT_CLIP),
                        help=f"default CLIP backbone: {', '.join(CLIP_CHECKPOINTS)} or an open_clip MODEL:TAG "
                             "(env CLIP_MODEL)")
    parser.add_argument("--clip-checkpoint", type=Path, default=env("CLIP_CHECKPOINT") or None,
                        help="local CLIP weights for the default backbone (env CLIP_CHECKPOINT)")
    parser.add_argument("--sam-model", default=env("SAM_MODEL") or None, choices=list(SAM_CHECKPOINTS),
                        help="default SAM (env SAM_MODEL; sam2.1_hiera_tiny, or sam2.1_hiera_large where models "
                             "run on a GPU)")
    parser.add_argument("--sam-checkpoint", type=Path, default=env("SAM_CHECKPOINT") or None,
                        help="local SAM weights for the default SAM (env SAM_CHECKPOINT)")
    parser.add_argument("--backbone-checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="local weights for another backbone choice, e.g. RN50=rn50.safetensors; repeatable "
                             "(env BACKBONE_CHECKPOINTS='NAME=PATH;NAME=PATH')")
    parser.add_argument("--no-sam", action="store_true", default=env("NO_SAM", "") in {"1", "true"},
                        help="run without SAM (env NO_SAM=1)")
    parser.add_argument("--device", default=env("DEVICE") or "auto",
                        help=f"where the models run: {DEVICE_CHOICES} (env DEVICE; default auto: CUDA when "
                             "available, else CPU)")
    return parser.parse_args(argv)


def model_config(args: argparse.Namespace) -> ModelConfig:
    pairs = args.backbone_checkpoint + [p for p in os.environ.get("BACKBONE_CHECKPOINTS", "").split(";") if p]
    if any("=" not in pair for pair in pairs):
        raise SystemExit("--backbone-checkpoint takes NAME=PATH, e.g. RN50=weights/rn50.safetensors")
    backbones = {name.strip(): Path(path.strip()) for name, path in (pair.split("=", 1) for pair in pairs)}
    return ModelConfig(
        clip_model=args.model, clip_checkpoint=args.clip_checkpoint, sam_model=args.sam_model,
        sam_checkpoint=args.sam_checkpoint, load_sam=not args.no_sam, backbone_checkpoints=backbones,
        text_cache_dir=default_text_cache_dir(), device=args.device,
    )


def main(argv: list[str] | None = None) -> None:
    if on_zero_gpu():
        import spaces  # noqa: F401 - first: on ZeroGPU it patches torch's CUDA queries before anything asks them
    configure_server_allocator()  # before Gradio's threads: few arenas, large freed blocks reused (operations.md)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    config = model_config(args)

    from . import gradio_patches
    from .handlers import Handlers
    from .examples import ASSETS
    from .layout import PAGE_CSS, PAGE_HEAD, THEME, build_demo

    gradio_patches.apply()
    problem = config.device_problem()
    if problem:  # the page says so too (model status), and every Run repeats it
        logging.getLogger("app").error("%s", problem)
    store = ModelStore(config)
    # ZeroGPU wants the models placed before the app launches, and runs them only inside GPU tasks
    # (the vocabulary is then encoded by the first Run and kept on disk for later workers).
    store.start(wait=on_zero_gpu(), warm=not on_zero_gpu())
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    demo = build_demo(Handlers(store, OUTPUT_DIR), queue_size=int(os.environ.get("QUEUE_SIZE") or 32))
    demo.launch(
        server_name=server_name(),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT") or os.environ.get("PORT") or 7860),
        ssr_mode=False,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(ASSETS), str(OUTPUT_DIR)],  # the examples and the served results, nothing else
        state_session_capacity=SESSION_CAPACITY,
        show_error=False,
        theme=THEME,
        css=PAGE_CSS,
        head=PAGE_HEAD,
        mcp_server=mcp_available(),
    )


def server_name() -> str:
    """Loopback on a laptop; every interface on a Space (SPACE_ID set) or where GRADIO_SERVER_NAME says so."""
    if os.environ.get("GRADIO_SERVER_NAME"):
        return os.environ["GRADIO_SERVER_NAME"]
    return "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1"


def mcp_available() -> bool:
    """Gradio's MCP server needs the `gradio[mcp]` extra (requirements.txt installs it)."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        logging.getLogger("app").warning("MCP server off: install gradio[mcp]")
        return False
    return True
