"""The default SAM follows where the models run, not whether a GPU exists."""

from __future__ import annotations

import torch

from explorer.model_store import ModelConfig, ModelStore
from surgery.loading import default_sam_name


def test_a_visible_gpu_does_not_make_vit_h_the_default_while_models_run_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA machine
    assert default_sam_name("cpu") == "vit_b"
    assert default_sam_name() == "vit_b"
    store = ModelStore(ModelConfig())
    assert store.config.default_sam() == "vit_b" and store.sam_choices()[0] == "vit_b"
    store.close()


def test_a_named_sam_wins(monkeypatch):
    assert ModelConfig(sam_model="vit_l").default_sam() == "vit_l"
