"""ResNet CLIP Surgery: parity with the reference outputs (tests/data/parity-rn) and,
at resolutions the fixture lacks, with an independent oracle written here.

The oracle follows the reference `AttentionPool2d` / `Attention` arithmetic
plainly (a qkv linear built from `v_proj` three times, explicit matmuls with a
materialised softmax, the original path's CLS copied in; the CLIP path through
`F.multi_head_attention_forward` as open_clip's pool calls it, keeping every
token) on a fresh copy of the positional embedding each call. It shares no code
with `surgery/`; it is first checked against the fixture, then vouches for the
product at other resolutions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer

import reference_impl as ref
from conftest import points_match
from surgery.clip.architecture import build_clip
from surgery.errors import InputError
from surgery.method.options import MapOptions
from surgery.method.feature_surgery import plain_similarity, surgery_across_labels
from surgery.method.points import points_for_sam
from surgery.clip.preprocess import clip_input
from surgery.images import load_image
from surgery.clip.resnet import encode_resnet_tokens
from surgery.clip.text import prompt_ensemble
from surgery.method.prompts import prompt_templates
from surgery.hub.state_dict import load_state_dict

PARITY_RN = Path(__file__).resolve().parents[1] / "data" / "parity-rn"
MAP_TOLERANCE = 1e-5
LABELS = ["rocket", "smoke", "sky"]


@pytest.fixture(scope="module")
def rn_model():
    return build_clip(load_state_dict(PARITY_RN / "weights.safetensors"))


@pytest.fixture(scope="module")
def rn_case() -> dict:
    return json.loads((PARITY_RN / "reference.json").read_text())[0]


@pytest.fixture(scope="module")
def rn_maps() -> dict[str, np.ndarray]:
    with np.load(PARITY_RN / "reference.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def rn_rocket() -> np.ndarray:
    return load_image(PARITY_RN / "rocket.png")


@pytest.fixture(scope="module")
def product_text(rn_model):
    """The engine's own text path (truncated-context prompt ensemble)."""
    return prompt_ensemble(rn_model, LABELS)


@pytest.fixture(scope="module")
def oracle_text(rn_model):
    """Full 77-token `encode_text`, the reference's way."""
    return ref.text_features(rn_model, SimpleTokenizer(), LABELS, list(prompt_templates()))


# --- the oracle ---------------------------------------------------------------

@torch.no_grad()
def oracle_image_features(model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(surgery, original) normalised tokens (B, 1 + g*g, c), the reference's arithmetic."""
    visual = model.visual
    x = visual.stem(pixels)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    pool = visual.attnpool
    x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3]).permute(2, 0, 1)  # (HW)NC
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (HW+1)NC
    pos = pool.positional_embedding.detach().clone()
    side = int((pos.shape[0] - 1) ** 0.5)
    new_side = int((x.shape[0] - 1) ** 0.5)
    if side != new_side:
        new_pos = pos[1:, :].reshape(-1, side, side, x.shape[-1]).permute(0, 3, 1, 2)
        new_pos = F.interpolate(new_pos, (new_side, new_side), mode="bilinear")
        new_pos = new_pos.reshape(-1, x.shape[-1], new_side * new_side).transpose(1, 2)
        pos = torch.cat([pos[:1, :], new_pos[0]], 0)
    x = x + pos[:, None, :]

    # Surgery: the reference's Attention with qkv = [v_proj; v_proj; v_proj].
    qkv_weight = torch.cat([pool.v_proj.weight, pool.v_proj.weight, pool.v_proj.weight], 0)
    qkv_bias = torch.cat([pool.v_proj.bias, pool.v_proj.bias, pool.v_proj.bias])
    tokens = x.transpose(0, 1)
    B, N, C = tokens.shape
    h = pool.num_heads
    scale = (C // h) ** -0.5
    qkv = F.linear(tokens, qkv_weight, qkv_bias).reshape(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn_ori = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    k = v
    q = k
    attn = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1)
    x_ori = (attn_ori @ v).transpose(1, 2).reshape(B, N, C)
    x_new = (attn @ v).transpose(1, 2).reshape(B, N, C)
    x_new = F.linear(x_new, pool.c_proj.weight, pool.c_proj.bias)
    x_ori = F.linear(x_ori, pool.c_proj.weight, pool.c_proj.bias)
    x_new[:, 0, :] = x_ori[:, 0, :]

    # CLIP: the trained attention pool, every token kept.
    original, _ = F.multi_head_attention_forward(
        query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=h,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=False, need_weights=False,
    )
    original = original.transpose(0, 1)
    return x_new / x_new.norm(dim=-1, keepdim=True), original / original.norm(dim=-1, keepdim=True)


def oracle_maps(model, text, resolution: int):
    """(surgery (g*g, K), clip (g*g, K), (H, W)) from the image file, all by the oracle."""
    pixels, shape = ref.preprocess(str(PARITY_RN / "rocket.png"), resolution)
    surgery, original = oracle_image_features(model, pixels)
    sim = ref.clip_feature_surgery(surgery, text)
    clip = original @ text.t()
    return sim[0, 1:], clip[0, 1:], shape


def product_maps(model, image, text, resolution: int):
    """(surgery (K, g, g), clip (K, g, g), grid) the way the engine computes them."""
    tokens = encode_resnet_tokens(model.visual, clip_input(image, resolution))
    g = tokens.grid[0]
    surgery = surgery_across_labels(tokens.surgery_tokens, text)[0, 1:].T.reshape(-1, g, g).numpy()
    clip = plain_similarity(tokens.clip_tokens, text)[0, 1:].T.reshape(-1, g, g).numpy()
    return surgery, clip, g


# --- tests ----------------------------------------------------------------------

def test_fixture_parity(rn_model, rn_rocket, rn_case, rn_maps, product_text):
    surgery, clip, g = product_maps(rn_model, rn_rocket, product_text, rn_case["resolution"])
    assert rn_case["labels"] == LABELS
    assert g == rn_case["grid"]
    np.testing.assert_allclose(surgery, rn_maps["case0_surgery"], atol=MAP_TOLERANCE, rtol=0)
    np.testing.assert_allclose(clip, rn_maps["case0_clip"], atol=MAP_TOLERANCE, rtol=0)
    W, H = rn_case["size"]
    assert [W, H] == list(rn_rocket.shape[1::-1])
    for k, label in enumerate(LABELS):
        assert points_match(points_for_sam(surgery[k], W, H), rn_case["points"][label]), label


def test_oracle_reproduces_fixture(rn_model, rn_case, rn_maps, oracle_text):
    """The oracle itself matches the reference outputs, so it can vouch for other resolutions."""
    sim, clip, shape = oracle_maps(rn_model, oracle_text, rn_case["resolution"])
    g = rn_case["grid"]
    np.testing.assert_allclose(sim.T.reshape(-1, g, g).numpy(), rn_maps["case0_surgery"], atol=MAP_TOLERANCE)
    np.testing.assert_allclose(clip.T.reshape(-1, g, g).numpy(), rn_maps["case0_clip"], atol=MAP_TOLERANCE)
    for k, label in enumerate(LABELS):
        assert points_match(ref.labelled_points(sim[:, k], shape), rn_case["points"][label]), label


@pytest.mark.parametrize("resolution", [288, 320, 448])
def test_matches_oracle_at_other_resolutions(rn_model, rn_rocket, product_text, oracle_text, resolution):
    sim, clip, shape = oracle_maps(rn_model, oracle_text, resolution)
    surgery, product_clip, g = product_maps(rn_model, rn_rocket, product_text, resolution)
    assert g == resolution // 32
    np.testing.assert_allclose(surgery, sim.T.reshape(-1, g, g).numpy(), atol=MAP_TOLERANCE, rtol=0)
    np.testing.assert_allclose(product_clip, clip.T.reshape(-1, g, g).numpy(), atol=MAP_TOLERANCE, rtol=0)
    height, width = rn_rocket.shape[:2]
    for k in range(len(LABELS)):
        expected = ref.labelled_points(sim[:, k], shape)
        assert points_match(points_for_sam(surgery[k], width, height), expected), LABELS[k]


def test_clip_cls_is_open_clips_image_embedding(rn_model, rn_rocket):
    """Row 0 of the CLIP path is exactly what open_clip's own attention pool returns."""
    pixels = clip_input(rn_rocket, 224)
    tokens = encode_resnet_tokens(rn_model.visual, pixels)
    with torch.no_grad():
        embedding = F.normalize(rn_model.visual(pixels), dim=-1)
    torch.testing.assert_close(tokens.clip_tokens[:, 0], embedding, atol=1e-6, rtol=0)


def test_token_shapes_and_batch(rn_model, rn_rocket):
    single = clip_input(rn_rocket, 320)
    flipped = clip_input(np.ascontiguousarray(rn_rocket[:, ::-1]), 320)
    tokens = encode_resnet_tokens(rn_model.visual, torch.cat([single, flipped]))
    assert tokens.grid == (10, 10)
    assert tokens.surgery_tokens.shape == tokens.clip_tokens.shape == (2, 101, rn_model.text_projection.shape[1])
    torch.testing.assert_close(tokens.surgery_tokens.norm(dim=-1), torch.ones(2, 101))
    alone = encode_resnet_tokens(rn_model.visual, single)
    torch.testing.assert_close(tokens.surgery_tokens[:1], alone.surgery_tokens, atol=1e-6, rtol=0)
    assert not torch.allclose(tokens.surgery_tokens, tokens.clip_tokens, atol=1e-4)


def test_model_untouched_across_resolutions(rn_model, rn_rocket):
    before = {k: v.clone() for k, v in rn_model.state_dict().items()}
    first = encode_resnet_tokens(rn_model.visual, clip_input(rn_rocket, 288))
    encode_resnet_tokens(rn_model.visual, clip_input(rn_rocket, 448))
    again = encode_resnet_tokens(rn_model.visual, clip_input(rn_rocket, 288))
    assert torch.equal(rn_model.visual.attnpool.positional_embedding, before["visual.attnpool.positional_embedding"])
    for key, value in rn_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(first.surgery_tokens, again.surgery_tokens)
    assert torch.equal(first.clip_tokens, again.clip_tokens)


@pytest.fixture(scope="module")
def rn_explainer():
    from surgery.loading import load_clip

    return load_clip(checkpoint=PARITY_RN / "weights.safetensors", display_name="tiny-rn", device="cpu")


@pytest.mark.parametrize("resolution", [240, 500, 1000])
def test_rejects_resolutions_off_the_output_stride(rn_explainer, resolution):
    """A ResNet's grid step is its output stride (32): the explainer refuses other resolutions before encoding."""
    with pytest.raises(InputError, match="multiple of the patch size 32"):
        rn_explainer.check_fits(MapOptions(resolution=resolution))


@pytest.mark.parametrize("resolution", [192, 1056])
def test_rejects_resolutions_out_of_range(resolution):
    with pytest.raises(InputError, match="between 224 and 1024"):
        MapOptions(resolution=resolution)


@pytest.mark.parametrize("resolution", [224, 256, 1024])
def test_accepts_usable_resolutions(rn_explainer, resolution):
    rn_explainer.check_fits(MapOptions(resolution=resolution))


def test_explainer_parity_on_resnet(rn_rocket, rn_case, rn_maps):
    """End to end through the loading path and ClipExplainer: a ResNet CLIP must load (a refusal fails
    this test) and reproduce the reference's maps and points."""
    from surgery.loading import load_clip
    from surgery.method.labels import parse_labels
    from surgery.method.options import MapOptions

    explainer = load_clip(checkpoint=PARITY_RN / "weights.safetensors", display_name="tiny-rn")
    assert explainer.is_resnet and explainer.patch_size == 32
    result = explainer.compute_maps(rn_rocket, parse_labels(", ".join(LABELS)).labels,
                                    MapOptions(resolution=rn_case["resolution"], redundancy="labels"))
    assert result.labels[0].maps["surgery"].shape == (rn_case["grid"], rn_case["grid"])
    np.testing.assert_allclose(np.stack([lm.maps["surgery"] for lm in result.labels]), rn_maps["case0_surgery"],
                               atol=MAP_TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.stack([lm.maps["clip"] for lm in result.labels]), rn_maps["case0_clip"],
                               atol=MAP_TOLERANCE, rtol=0)
    for lm in result.labels:
        points = points_for_sam(lm.parts["surgery"][0], result.width, result.height)
        assert points_match(points, rn_case["points"][lm.label.text]), lm.label.text
    with pytest.raises(InputError, match="multiple of the patch size 32"):
        explainer.check_fits(MapOptions(resolution=240))
