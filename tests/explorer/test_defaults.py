"""The app's default SAM and precision follow the device the models are placed on, not whether a GPU exists."""

from __future__ import annotations

import torch

from explorer.model_store import ModelConfig, ModelStore


def _visible_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))


def test_a_visible_gpu_does_not_make_the_gpu_sam_the_default_while_models_run_on_the_cpu(monkeypatch):
    _visible_gpu(monkeypatch)
    store = ModelStore(ModelConfig(device="cpu"))
    assert store.config.default_sam() == "sam2.1_hiera_tiny" and store.sam_choices()[0] == "sam2.1_hiera_tiny"
    assert store.config.default_precision() == "fp32" and store.sam_key(None) == ("sam2.1_hiera_tiny", "fp32")
    assert {"vit_b", "vit_l", "vit_h", "sam2.1_hiera_large"} <= set(store.sam_choices())  # every SAM offered
    store.close()


def test_models_placed_on_the_gpu_default_to_sam2_large_and_bf16(monkeypatch):
    _visible_gpu(monkeypatch)
    for setting in ("auto", "cuda", "cuda:0"):
        config = ModelConfig(device=setting)
        assert config.default_sam() == "sam2.1_hiera_large" and config.default_precision() == "bf16", setting
        assert config.precisions() == ["fp32", "bf16", "fp16"]


def test_a_device_that_cannot_be_used_keeps_the_cpu_defaults_and_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = ModelConfig(device="cuda")
    assert config.default_sam() == "sam2.1_hiera_tiny" and config.default_precision() == "fp32"
    assert "no usable CUDA GPU" in config.device_problem()


def test_a_named_sam_wins(monkeypatch):
    _visible_gpu(monkeypatch)
    assert ModelConfig(sam_model="vit_l").default_sam() == "vit_l"
    assert ModelConfig(sam_model="vit_b", device="cuda").default_sam() == "vit_b"
