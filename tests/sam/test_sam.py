"""SAM: architecture reading, checkpoint loading, fast attention, and the segmenter service.

Real weights are never available here, so every model is a deterministic
random checkpoint written to disk in the real file formats and read back
through `load_sam`. Random weights still give non-trivial masks, so the
comparisons below are against SAM's own code paths, not against fixed numbers.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT, window_partition

from surgery.errors import CheckpointError, InputError
from surgery.method.results import MaskPrediction
from surgery.precision import bf16_supported, resolve_precision
from surgery.sam.segmenter import ImageEmbedding, SamSegmenter
from surgery.sam.fast_encoder import (
    FastImageEncoderViT,
    FastSamAttention,
    install_fast_attention,
    uninstall_fast_attention,
)
from surgery.sam.architecture import (
    VIT_B_ARCH,
    SamArchitecture,
    build_sam,
    load_sam,
    make_sam,
    read_sam_architecture,
)
from checkpoints import SMALL_ARCH, random_sam_state_dict, write_random_sam_checkpoint
from surgery.hub.state_dict import load_state_dict

torch.set_num_threads(2)

# A second non-standard layout: patch 8, one global block first, window 6 on a
# 16×16 grid (padded to 18), one decoder layer, narrow prompt embedding.
ODD_ARCH = SamArchitecture(
    encoder_embed_dim=48, encoder_depth=3, encoder_num_heads=3, encoder_global_attn_indexes=(0,),
    window_size=6, patch_size=8, img_size=128, encoder_mlp_dim=96, out_chans=16, mask_in_chans=4,
    decoder_depth=1, decoder_mlp_dim=32, iou_head_depth=2, iou_head_hidden_dim=24,
)
# Mid-size: 32×32 grid, window 14 (padded to 42, 3×3 windows), heads of width 32, as in SAM.
MID_ARCH = SamArchitecture(
    encoder_embed_dim=128, encoder_depth=4, encoder_num_heads=4, encoder_global_attn_indexes=(1, 3),
    window_size=14, img_size=512, out_chans=32, mask_in_chans=8, decoder_mlp_dim=64, iou_head_hidden_dim=32,
)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> str:
    return str(write_random_sam_checkpoint(tmp_path_factory.mktemp("sam") / "small.pth", SMALL_ARCH, seed=1))


@pytest.fixture(scope="module")
def stock_sam(small_checkpoint):
    return load_sam(small_checkpoint, fast_attention=False)


@pytest.fixture(scope="module")
def fast_sam(small_checkpoint):
    return load_sam(small_checkpoint)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """Non-square, so SAM's resize and padding are both exercised."""
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 256, (12, 20, 3)).repeat(10, axis=0).repeat(10, axis=1)
    return (smooth + rng.integers(-20, 20, smooth.shape)).clip(0, 255).astype(np.uint8)


def other_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (90, 70, 3), dtype=np.uint8)


# --- architecture and checkpoints -------------------------------------------------------------


def test_vit_b_layout_is_read_from_shapes_with_or_without_a_key_prefix():
    shapes_only = make_sam(VIT_B_ARCH).state_dict()
    assert read_sam_architecture(shapes_only) == VIT_B_ARCH
    arch = read_sam_architecture({f"module.{k}": v for k, v in shapes_only.items()})
    assert arch == VIT_B_ARCH
    assert (arch.encoder_embed_dim, arch.encoder_depth, arch.encoder_num_heads) == (768, 12, 12)
    assert arch.encoder_global_attn_indexes == (2, 5, 8, 11)
    assert (arch.window_size, arch.img_size, arch.patch_size, arch.out_chans) == (14, 1024, 16, 256)


@pytest.mark.parametrize("arch", [SMALL_ARCH, ODD_ARCH, MID_ARCH], ids=["small", "odd", "mid"])
def test_nonstandard_layouts_round_trip(arch):
    assert read_sam_architecture(make_sam(arch).state_dict()) == arch


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_file_loads_with_its_architecture_and_weights(tmp_path, suffix):
    path = write_random_sam_checkpoint(tmp_path / f"odd{suffix}", ODD_ARCH, seed=3)
    sam = load_sam(path)
    assert read_sam_architecture(load_state_dict(path)) == ODD_ARCH
    written = random_sam_state_dict(ODD_ARCH, seed=3)
    loaded = sam.state_dict()
    assert loaded.keys() == written.keys()  # fast attention keeps the stock parameter names
    assert all(torch.equal(loaded[k], written[k]) for k in written)
    assert not sam.training and not any(p.requires_grad for p in sam.parameters())
    assert all(p.dtype == torch.float32 for p in sam.parameters())
    assert all(isinstance(b.attn, FastSamAttention) for b in sam.image_encoder.blocks)
    assert [b.window_size for b in sam.image_encoder.blocks] == [0, 6, 6]


def test_truncated_checkpoint_is_a_checkpoint_error(tmp_path, small_checkpoint):
    data = open(small_checkpoint, "rb").read()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_sam(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError):
        load_sam(garbage)


def test_state_dict_that_is_not_sam_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "classifier.pth"
    torch.save({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a Segment Anything model.*patch_embed"):
        load_sam(path)


def test_incomplete_or_misshapen_sam_is_a_checkpoint_error():
    weights = random_sam_state_dict(SMALL_ARCH)
    no_decoder = {k: v for k, v in weights.items() if not k.startswith("mask_decoder.")}
    with pytest.raises(CheckpointError, match="mask_decoder"):
        build_sam(no_decoder)
    missing_one = dict(weights)
    del missing_one["image_encoder.blocks.2.mlp.lin2.bias"]
    with pytest.raises(CheckpointError, match="missing: image_encoder.blocks.2.mlp.lin2.bias"):
        build_sam(missing_one)
    extra = dict(weights, **{"image_encoder.blocks.0.attn.extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected"):
        build_sam(extra)
    misshapen = dict(weights)
    misshapen["image_encoder.blocks.1.attn.qkv.weight"] = torch.zeros(10, 64)
    with pytest.raises(CheckpointError, match="wrong shape"):
        build_sam(misshapen)


# --- fast attention ---------------------------------------------------------------------------


def _encoders(arch: SamArchitecture, seed: int):
    """Two stock encoders with the same random weights (separate modules, so one can be modified)."""
    weights = random_sam_state_dict(arch, seed)
    stock = build_sam(weights, fast_attention=False).image_encoder
    fast = build_sam({k: v.clone() for k, v in weights.items()}, fast_attention=False).image_encoder
    return stock, fast


@pytest.mark.parametrize(
    "arch, options",
    [
        (SMALL_ARCH, {}),  # head groups (windowed) and whole heads (global), windows padded 16 → 20
        (SMALL_ARCH, {"slab_scores": 40 * 256 + 5}),  # runs of 40 query rows: 256 = 6 × 40 + 16
        (ODD_ARCH, {"slab_scores": 2 * 36 * 36 + 1}),  # windowed: groups of 2 of 3 heads; global: row runs
        (MID_ARCH, {}),  # SAM's window 14 with padding (32 → 42), SAM's head width 32
        (MID_ARCH, {"method": "sdpa"}),  # the path GPUs take
    ],
    ids=["small", "small-row-slabs", "odd-head-groups", "mid", "mid-sdpa"],
)
def test_fast_attention_matches_stock_encoder(arch, options):
    stock, fast = _encoders(arch, seed=5)
    assert install_fast_attention(fast, **options) == arch.encoder_depth
    x = torch.randn(1, 3, arch.img_size, arch.img_size, generator=torch.Generator().manual_seed(0)) * 60
    with torch.inference_mode():
        expected = stock(x)
        actual = fast(x)
    assert expected.abs().mean() > 0.1
    assert (actual - expected).abs().max().item() <= 1e-4


def test_fast_attention_matches_stock_on_vit_b_sized_blocks():
    """vit_b's real token grid (64×64, window 14 padded to 70) and heads (12 × 64), two of its blocks.

    The whole 12-block vit_b encoder is compared in benchmarks/bench_sam_encoder.py;
    here one windowed and one global block keep the test to a few seconds.
    """
    arch = replace(VIT_B_ARCH, encoder_depth=2, encoder_global_attn_indexes=(1,), decoder_depth=1)
    stock, fast = _encoders(arch, seed=7)
    install_fast_attention(fast)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0)) * 60
    with torch.inference_mode():
        difference = (fast(x) - stock(x)).abs().max().item()
    assert difference <= 1e-4


def test_fast_attention_relative_position_path_is_exercised():
    """A bias-free attention must differ from stock, or the equality above would prove nothing."""
    stock, fast = _encoders(SMALL_ARCH, seed=5)
    for block in fast.blocks:
        block.attn.rel_pos_h = torch.nn.Parameter(torch.zeros_like(block.attn.rel_pos_h))
    install_fast_attention(fast)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 60
    with torch.inference_mode():
        assert (fast(x) - stock(x)).abs().max().item() > 1e-2


@pytest.mark.parametrize("grid, window, heads", [(9, 4, 2), (7, 0, 3), (5, 5, 1)])
def test_fast_attention_module_matches_stock_module(grid, window, heads):
    """Single attention module on (windowed) token grids, including batches of several windows."""
    generator = torch.Generator().manual_seed(grid)
    dim = 16 * heads
    size = window or grid
    stock = Attention(dim, num_heads=heads, use_rel_pos=True, input_size=(size, size))
    with torch.no_grad():
        for parameter in stock.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    x = torch.randn(2, grid, grid, dim, generator=generator)
    if window:
        x, _ = window_partition(x, window)
    with torch.inference_mode():
        expected = stock(x)
        variants = [FastSamAttention(stock, slab_scores=n) for n in (1 << 21, size**4 + 1, 7)]
        variants.append(FastSamAttention(stock, method="sdpa"))  # the GPU path, checked here on CPU
        for variant in variants:
            actual = variant(x)
            assert (actual - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_scratch_encoder_forward_is_bit_identical_to_stock_forward(autocast):
    """FastImageEncoderViT's scratch buffers and in-place sums change no bit of the embedding.

    The reference is segment_anything's own `ImageEncoderViT.forward` over the same (fast-attention)
    blocks. It catches a sum written into a lower-precision tensor under autocast, and the neck
    convolutions rounding differently on another memory layout (both seen while writing it).
    """
    if autocast and not bf16_supported("cpu"):
        pytest.skip("no native bf16 on this CPU")  # the fp32 case still runs
    arch = replace(MID_ARCH, encoder_depth=3, encoder_global_attn_indexes=(1,))
    encoder = build_sam(random_sam_state_dict(arch, seed=3)).image_encoder
    assert type(encoder) is FastImageEncoderViT
    x = torch.randn(1, 3, arch.img_size, arch.img_size, generator=torch.Generator().manual_seed(4)) * 60
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fast = encoder(x)
        stock_forward = ImageEncoderViT.forward(encoder, x)
        again = encoder(x)  # buffers are per call: a second call is unaffected by the first
    assert fast.abs().mean() > 0.1
    assert fast.dtype == stock_forward.dtype
    assert torch.equal(fast, stock_forward)
    assert torch.equal(fast, again)


def test_uninstall_restores_stock_attention(stock_sam):
    encoder = build_sam(random_sam_state_dict(SMALL_ARCH, seed=1)).image_encoder
    assert uninstall_fast_attention(encoder) == SMALL_ARCH.encoder_depth
    assert all(type(b.attn) is Attention for b in encoder.blocks)
    assert type(encoder) is ImageEncoderViT
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(encoder(x), stock_sam.image_encoder(x))


# --- segmenter --------------------------------------------------------------------------------

POINT_SETS = [
    [[50, 60, 1]],
    [[10, 10, 1], [150, 100, 0]],
    [[199, 119, 1]],
    [[120, 30, 1], [125, 35, 1], [20, 100, 0]],
]


def test_segmenter_equals_sam_predictor(stock_sam, image):
    reference = SamPredictor(stock_sam)
    reference.set_image(image)
    segmenter = SamSegmenter(stock_sam)
    embedding = segmenter.embed(image)
    assert embedding.original_size == image.shape[:2]
    assert torch.equal(embedding.features, reference.features)
    for points in map(np.array, POINT_SETS):
        masks, scores, _ = reference.predict(
            point_coords=points[:, :2].astype(float), point_labels=points[:, 2], multimask_output=True)
        prediction = segmenter.predict(embedding, points)
        assert prediction.candidates.shape == (3, *image.shape[:2]) and prediction.candidates.dtype == bool
        assert 0.01 < prediction.candidates.mean() < 0.99  # random weights, but not a trivial mask
        np.testing.assert_array_equal(prediction.candidates, masks)
        np.testing.assert_array_equal(prediction.scores, scores)
        assert prediction.scores.dtype == np.float32
        assert prediction.best == int(np.argmax(scores))


def test_prompts_change_the_mask(stock_sam, image):
    segmenter = SamSegmenter(stock_sam)
    embedding = segmenter.embed(image)
    masks = [segmenter.predict(embedding, np.array(p)).mask for p in POINT_SETS]
    assert any(not np.array_equal(masks[0], m) for m in masks[1:])


def test_fast_model_segments_like_stock_model(stock_sam, fast_sam, image):
    stock, fast = SamSegmenter(stock_sam), SamSegmenter(fast_sam)
    stock_embedding, fast_embedding = stock.embed(image), fast.embed(image)
    assert (stock_embedding.features - fast_embedding.features).abs().max() <= 1e-4
    for points in map(np.array, POINT_SETS):
        a, b = stock.predict(stock_embedding, points), fast.predict(fast_embedding, points)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        assert (a.candidates != b.candidates).mean() < 1e-3  # only pixels within rounding of the threshold


def test_best_candidate_is_the_highest_score(stock_sam, image):
    segmenter = SamSegmenter(stock_sam)
    embedding = segmenter.embed(image)
    found_nonzero_best = False
    for x in range(5, 200, 15):
        prediction = segmenter.predict(embedding, np.array([[x, 60, 1]]))
        assert prediction.best == int(np.argmax(prediction.scores))
        assert prediction.score == pytest.approx(float(prediction.scores.max()))
        np.testing.assert_array_equal(prediction.mask, prediction.candidates[prediction.best])
        found_nonzero_best |= prediction.best != 0
    assert found_nonzero_best


def test_mask_prediction_shows_its_best_candidate():
    candidates = np.stack([np.full((2, 2), i % 2 == 0) for i in range(3)])
    prediction = MaskPrediction(candidates=candidates, scores=np.array([0.2, 0.1, 0.7], np.float32), best=2)
    np.testing.assert_array_equal(prediction.mask, candidates[2])
    assert prediction.score == pytest.approx(0.7)


def test_one_encoding_per_image_and_lru_eviction(stock_sam, image):
    segmenter = SamSegmenter(stock_sam, cache_entries=2)
    embedding = segmenter.embed(image)
    for points in map(np.array, POINT_SETS):
        segmenter.predict(segmenter.embed(image.copy()), points)
    assert segmenter.encode_calls == 1
    assert segmenter.embed(image) is embedding
    second, third = other_image(1), other_image(2)
    segmenter.embed(second)
    assert segmenter.encode_calls == 2
    segmenter.embed(image)  # touch: now `second` is least recently used
    segmenter.embed(third)  # evicts `second`
    assert segmenter.encode_calls == 3 and len(segmenter.cached_keys()) == 2
    assert segmenter.embed(image) is embedding and segmenter.encode_calls == 3
    segmenter.embed(second)
    assert segmenter.encode_calls == 4
    # A different shape with the same bytes is a different image.
    segmenter.embed(np.ascontiguousarray(second.reshape(70, 90, 3)))
    assert segmenter.encode_calls == 5


def test_concurrent_requests_encode_once_and_agree(stock_sam, image):
    segmenter = SamSegmenter(stock_sam)
    results: list[MaskPrediction] = []
    errors: list[BaseException] = []

    def request(points):
        try:
            results.append(segmenter.predict(segmenter.embed(image), np.array(points)))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(POINT_SETS[i % 2],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 6
    assert segmenter.encode_calls == 1
    expected = segmenter.predict(segmenter.embed(image), np.array(POINT_SETS[0]))
    same = [r for r in results if np.array_equal(r.candidates, expected.candidates)]
    assert len(same) == 3


def test_bad_requests_are_input_errors(stock_sam, fast_sam, image):
    segmenter = SamSegmenter(stock_sam)
    embedding = segmenter.embed(image)
    with pytest.raises(InputError, match="at least one point"):
        segmenter.predict(embedding, np.zeros((0, 3), dtype=int))
    with pytest.raises(InputError, match="labels"):
        segmenter.predict(embedding, np.array([[5, 5, 2]]))
    with pytest.raises(InputError, match="outside"):
        segmenter.predict(embedding, np.array([[200, 5, 1]]))
    with pytest.raises(InputError, match="x, y, label"):
        segmenter.predict(embedding, np.array([[5, 5]]))
    with pytest.raises(InputError, match="different SAM model"):
        SamSegmenter(fast_sam).predict(embedding, np.array([[5, 5, 1]]))
    with pytest.raises(InputError, match="uint8"):
        segmenter.embed(image.astype(np.float32))
    with pytest.raises(InputError, match="RGB"):
        segmenter.embed(image[..., 0])
    # A precision is refused where a request comes in (surgery.request), for the device the models run on
    with pytest.raises(InputError, match="unknown precision"):
        resolve_precision("int8", stock_sam.device)
    with pytest.raises(InputError, match="fp16 runs on a GPU only"):
        resolve_precision("fp16", stock_sam.device)
    assert isinstance(embedding, ImageEmbedding)
    assert embedding.features.shape == (1, SMALL_ARCH.out_chans, 16, 16) and embedding.input_size == (154, 256)


def test_bf16_is_close_to_fp32_or_refused(fast_sam, image):
    if not bf16_supported("cpu"):
        with pytest.raises(InputError, match="bf16 is not supported on this CPU; use fp32"):
            resolve_precision("bf16", fast_sam.device)
        return
    fp32, bf16 = SamSegmenter(fast_sam), SamSegmenter(fast_sam, precision="bf16")
    e32, e16 = fp32.embed(image), bf16.embed(image)
    assert e16.features.dtype == torch.float32
    assert (e32.features - e16.features).abs().mean() < 0.05 * e32.features.abs().mean()
    points = np.array(POINT_SETS[1])
    a, b = fp32.predict(e32, points), bf16.predict(e16, points)
    assert b.scores.dtype == np.float32 and b.candidates.dtype == bool
    np.testing.assert_allclose(a.scores, b.scores, atol=0.05)
    assert (a.candidates != b.candidates).mean() < 0.05


def test_bf16_capability_check_is_false_for_devices_without_it():
    assert bf16_supported("meta") is False
