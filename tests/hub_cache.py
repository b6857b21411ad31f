"""Lay a file into a Hugging Face hub cache folder exactly as huggingface_hub does
(refs/main -> snapshots/<commit>/<file>), so the real `hf_hub_download` finds it offline."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def place_in_hub_cache(cache: Path, repo_id: str, filename: str, source: Path) -> Path:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    target = repo / "snapshots" / COMMIT / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def offline_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_HOME=str(cache.parent / "hf-home"))
    return env
