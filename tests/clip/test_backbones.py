"""Backbone choice: the registry's ResNets, open_clip's pretrained names, refusals by name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import DATA
from surgery.errors import InputError
from surgery.method.labels import parse_labels
from surgery.method.options import MapOptions
from surgery.loading import load_clip
from surgery.hub.openclip_names import openclip_checkpoint, parse_openclip_name
from surgery.hub.registry import CLIP_CHECKPOINTS, OPENCLIP_SUGGESTED

ROOT = DATA.parents[1]


def test_registry_has_every_openai_resnet():
    for name, repo in [("RN50", "timm/resnet50_clip.openai"), ("RN101", "timm/resnet101_clip.openai"),
                       ("RN50x4", "timm/resnet50x4_clip.openai"), ("RN50x16", "timm/resnet50x16_clip.openai"),
                       ("RN50x64", "timm/resnet50x64_clip.openai")]:
        assert CLIP_CHECKPOINTS[name].repo_id == repo
        assert CLIP_CHECKPOINTS[name].filename == "open_clip_model.safetensors"


def test_resnet_backbone_from_a_local_file(rocket):
    explainer = load_clip("RN50", DATA / "parity-rn" / "weights.safetensors")
    assert explainer.is_resnet and explainer.patch_size == 32
    maps = explainer.compute_maps(rocket, parse_labels("rocket, smoke").labels, MapOptions(224, "labels"))
    assert maps.labels[0].maps["surgery"].shape == (7, 7)


def test_open_clip_names_resolve_through_open_clips_registry():
    for name in OPENCLIP_SUGGESTED:
        assert parse_openclip_name(name) is not None
        assert openclip_checkpoint(name).repo_id
    assert parse_openclip_name("ViT-B-16:no_such_tag") is None
    assert openclip_checkpoint("ViT-B-16:laion2b_s34b_b88k").repo_id == "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"


@pytest.mark.parametrize("name,reason", [
    ("ViT-B-16-SigLIP:webli", "text tower is not CLIP's own"),
    ("coca_ViT-B-32:laion2b_s13b_b90k", "text tower is not CLIP's own"),
])
def test_unsupported_architectures_are_refused_by_name(name, reason):
    with pytest.raises(InputError) as error:
        load_clip(name)
    assert name in str(error.value) and reason in str(error.value)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(InputError, match="Unknown CLIP model 'ViT-Z/99'.*MODEL:TAG"):
        load_clip("ViT-Z/99")


def test_compatible_open_clip_model_goes_to_the_hub(tmp_path):
    """A compatible name passes the architecture check and then needs its weights (offline: a clear error)."""
    code = ("from surgery.loading import load_clip\n"
            "from surgery.errors import WeightsUnavailable\n"
            "try:\n    load_clip('ViT-B-16:laion2b_s34b_b88k')\n"
            "except WeightsUnavailable as exc:\n    print('UNAVAILABLE', exc)\n")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert "UNAVAILABLE" in result.stdout, result.stderr[-2000:]
    assert "laion/CLIP-ViT-B-16-laion2B-s34B-b88K" in result.stdout
