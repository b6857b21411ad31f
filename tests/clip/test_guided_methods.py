"""SC-CLIP, ResCLIP and ProxyCLIP raw maps (surgery/clip/guided_methods.py, METHODS2.md).

(a) parity with the official code: tests/data/methods2/methods.* (the project's shared fixture)
and extra_official.* (ResCLIP cases whose first pass mixes labels, one on a rectangular grid, and
SC-CLIP at N = 441, where the LOF quantile is one sample); (b) the trunk record against the blocks
themselves and torch's own attention weights; (c) the layer-depth rule; (d) ProxyCLIP's
SAM proxy through the project's SAM loader on an official-format .pth, and why it needs its own
encoder pass; (e) a batch is B independent runs; (f) bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import newer_reference as oracle
from conftest import DATA
from PIL import Image

from surgery.clip import guided_methods as gm
from surgery.clip.preprocess import CLIP_MEAN, CLIP_STD, clip_input
from surgery.clip.trunk import record_trunk
from surgery.errors import InputError
from surgery.method.table import IMAGENET_TEMPLATES

METHODS2 = DATA / "methods2"
TOLERANCE = 1e-5
# ProxyCLIP cuts its attention at a hard threshold (similarities below beta x their mean), so an entry
# within a rounding of the cut flips with the CPU's kernels (the SAM encoder's and the similarity's float
# sums): on this project's machines 12 to 18 of 4096 rows flip and move the map by 2e-5 to 6.4e-5, by
# host. Rows with no similarity within NEAR_CUT of the cut are compared at TOLERANCE; every row at
# PROXY_KERNEL_TOLERANCE.
PROXY_KERNEL_TOLERANCE = 2e-4
NEAR_CUT = 1e-5


@pytest.fixture(scope="module")
def visual(explainer):
    return explainer.model.visual


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return json.loads((METHODS2 / "methods.json").read_text())


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(METHODS2 / "methods.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory) -> Path:
    from checkpoints import write_proxy_sam_checkpoint

    return write_proxy_sam_checkpoint(tmp_path_factory.mktemp("sam") / "sam_tiny_full.pth")


@pytest.fixture(scope="module")
def sam_encoder(sam_checkpoint):
    from surgery.sam.architecture import load_sam

    # Stock attention: the fast one reorders float sums, which moves cut entries (see PROXY_KERNEL_TOLERANCE).
    return load_sam(sam_checkpoint, fast_attention=False).image_encoder


def full_record(visual, pixels):
    """The trunk with everything SC-CLIP and ResCLIP read (an 8-block tower)."""
    return record_trunk(visual, pixels, attention_blocks=gm.resclip_attention_blocks(8),
                        hidden_blocks=gm.scclip_hidden_blocks(8))


def label_map(tokens: torch.Tensor, features: torch.Tensor, rows: int, cols: int) -> np.ndarray:
    """(K, rows, cols) cosine of each normalised token with each label feature."""
    return (tokens[0] @ features.T).T.reshape(-1, rows, cols).numpy()


def rectangular_input(image: np.ndarray, height: int, width: int) -> torch.Tensor:
    """`clip_input` for a (height, width) resize: PIL bicubic, /255, CLIP mean/std."""
    resized = Image.fromarray(image).resize((width, height), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return ((pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)).unsqueeze(0)


# --- (c) layer indices ------------------------------------------------------------------------


def test_layer_indices_follow_the_depth_rule_and_the_fixture(cases):
    # METHODS2.md's table at L = 8, exact halves included (3 * 8 / 12 + 1/2 = 2.5 -> 2; 9 -> 6.5 -> 6)
    assert [gm.scaled_layer_index(i, 8) for i in (8, 3, 10, 5, 9)] == [5, 2, 7, 3, 6]
    assert [gm.scaled_layer_index(i, 6) for i in (3, 9)] == [2, 5]  # 1.5 + 0.5 = 2.0 exactly; 4.5 + 0.5 = 5.0
    assert [gm.scaled_layer_index(i, blocks) for i, blocks in ((8, 12), (10, 24), (3, 32))] == [8, 10, 3]
    assert gm.resclip_attention_blocks(12) == (5, 6, 7, 8)
    params = cases[0]["params"]
    assert gm.resclip_attention_blocks(params["resclip"]["vision_blocks"]) == tuple(params["resclip"]["rcs_layers"])
    sc = params["scclip"]
    assert gm.scclip_layers(sc["vision_blocks"]) == (sc["pre_adjust_idx"], sc["post_adjust_idx"],
                                                     (sc["multi_start_idx"], sc["multi_end_idx"]))
    official = sc["official_idx_12_blocks"]
    assert gm.scclip_layers(12) == (official["pre_adjust_idx"], official["post_adjust_idx"],
                                    (official["multi_start_idx"], official["multi_end_idx"]))


def test_method_constants_are_the_fixtures(cases):
    params = cases[0]["params"]
    sc, res, proxy = params["scclip"], params["resclip"], params["proxyclip"]
    assert (gm.SCCLIP_BETA, gm.SCCLIP_MID_ATTENTION_SCALE, gm.SCCLIP_RES_CLS) == (sc["beta"], sc["mid_attn_scale"],
                                                                                sc["res_cls"])
    assert (gm.SCCLIP_LOF_NEIGHBOURS, gm.SCCLIP_LOF_CONTAMINATION) == (sc["lof_n_neighbors"], sc["lof_contamination"])
    assert list(gm.RESCLIP_RCS_WEIGHTS) == res["attn_rcs_weights"] and list(gm.RESCLIP_SFR_WEIGHTS) == res["attn_sfr_weights"]
    assert (gm.RESCLIP_SIGMA, gm.RESCLIP_LABEL_THRESHOLD) == (res["gaussian_std"], res["temp_thd"])
    assert gm.RESCLIP_FIRST_PASS_LOGIT_SCALE == res["first_pass_logit_scale"]
    assert (gm.PAMR_ITERATIONS, list(gm.PAMR_DILATIONS)) == (res["first_pass_pamr"]["steps"],
                                                             res["first_pass_pamr"]["dilations"])
    assert (gm.PROXYCLIP_BETA, gm.PROXYCLIP_GAMMA, gm.PROXY_INPUT_SIZE) == (proxy["beta"], proxy["gamma"],
                                                                           proxy["sam_size"])


# --- (b) the trunk record ---------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [224, 448])
def test_record_trunk_keeps_the_blocks_outputs_and_their_attention(visual, rocket, resolution):
    pixels = clip_input(rocket, resolution)
    grid = resolution // 16
    record = record_trunk(visual, pixels, attention_blocks=(0, 4), hidden_blocks=(2, 3))
    assert record.grid == (grid, grid) and record.blocks == 8 and set(record.hidden) == {2, 3, 6}
    assert torch.equal(record.last, record.hidden[6])
    with torch.inference_mode():
        assert torch.equal(visual.transformer.resblocks[3](record.hidden[2]), record.hidden[3])  # bit for bit
    assert set(record.attention) == {0, 4}
    block = visual.transformer.resblocks[4]
    assert block.attn.batch_first
    y = block.ln_1(record.hidden[3])
    with torch.inference_mode():
        _, torch_weights = block.attn(y, y, y, need_weights=True, average_attn_weights=False)
    assert record.attention[4].shape == (1, 2, grid * grid + 1, grid * grid + 1)
    torch.testing.assert_close(record.attention[4], torch_weights, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        record_trunk(visual, pixels, attention_blocks=(7,))  # the last block is not in the trunk


# --- (a) parity: shared fixture ---------------------------------------------------------------


def test_fixture_covers_every_method(cases, expected):
    assert [c["resolution"] for c in cases] == [224, 448]
    for i, case in enumerate(cases):
        for method in ("scclip", "resclip", "proxyclip"):
            assert expected[f"case{i}_{method}"].shape == (len(case["labels"]), case["grid"][method],
                                                           case["grid"][method])


@pytest.mark.parametrize("case_index", [0, 1])
def test_scclip_and_resclip_official_parity(explainer, visual, rocket, cases, expected, case_index):
    case = cases[case_index]
    pixels = clip_input(rocket, case["resolution"])
    features = explainer.text_features(case["labels"], IMAGENET_TEMPLATES)
    record = full_record(visual, pixels)
    for method, tokens in (("scclip", gm.scclip_tokens(visual, record)),
                           ("resclip", gm.resclip_tokens(visual, record, pixels, features))):
        grid = case["grid"][method]
        assert grid == case["resolution"] // 16 and record.grid == (grid, grid)
        assert tokens.shape == (1, grid * grid, visual.proj.shape[1])
        actual = label_map(tokens, features, grid, grid)
        error = float(np.abs(actual - expected[f"case{case_index}_{method}"]).max())
        print(f"{method} case {case_index}: max error {error:.2e}")
        assert error <= TOLERANCE, method


# --- (a) parity: extra official cases -----------------------------------------------------------


# The SC-CLIP case at 336 px (N = 441) was made by the official code under this project's torch
# 2.14.1, whose torch.quantile computes the rank in float64 (417.99999...) and so puts the LOF threshold
# just below sample 418, making it an outlier. METHODS2.md states the torch SC-CLIP was written with:
# a float32 rank, exactly 418, that sample the threshold and not an outlier. The engine follows the
# specification (test_lof_threshold_at_441_patches_is_one_sample; the whole map is compared with the
# specification's independent port in tests/clip/test_newer_engine_vs_oracle.py); the other cases
# do not reach a tie.
EXTRA_CASES = [(index, case) for index, case in enumerate(json.loads((METHODS2 / "extra_official.json").read_text()))
               if not (case["method"] == "scclip" and case["size"] == [336, 336])]


def test_lof_threshold_at_441_patches_is_one_sample():
    """0.95 x 440 is exactly 418 in float32: the threshold is sample 418 itself, which is not an outlier."""
    scores = torch.arange(441, dtype=torch.float32).flip(0)  # any order
    threshold = gm._quantile(scores, 1 - gm.SCCLIP_LOF_CONTAMINATION)
    assert threshold == 418.0
    assert int((scores > threshold).sum()) == 22
    assert gm._quantile(torch.arange(11, dtype=torch.float32), 0.25) == 2.5  # interpolation between samples


@pytest.mark.parametrize("index, case", EXTRA_CASES,
                         ids=[f"{case['method']}-{case['size'][0]}x{case['size'][1]}" for _, case in EXTRA_CASES])
def test_extra_official_parity(explainer, visual, rocket, index, case):
    with np.load(METHODS2 / "extra_official.npz") as data:
        expected = data[f"case{index}_{case['method']}"]
    height, width = case["size"]
    pixels = rectangular_input(rocket, height, width)
    features = explainer.text_features(case["labels"], IMAGENET_TEMPLATES)
    record = full_record(visual, pixels)
    if case["method"] == "resclip":
        tokens = gm.resclip_tokens(visual, record, pixels, features)
    else:
        tokens = gm.scclip_tokens(visual, record)
    assert record.grid == tuple(case["grid"])
    error = float(np.abs(label_map(tokens, features, *record.grid) - expected).max())
    print(f"{case['method']} {height}x{width}: max error {error:.2e}")
    assert error <= TOLERANCE


# --- (d) ProxyCLIP ----------------------------------------------------------------------------


def test_sam_loader_reads_the_tiny_configuration(sam_checkpoint, sam_encoder):
    from surgery.hub.state_dict import load_state_dict
    from surgery.sam.architecture import read_sam_architecture

    arch = read_sam_architecture(load_state_dict(sam_checkpoint))
    assert (arch.encoder_embed_dim, arch.encoder_depth, arch.encoder_num_heads) == (96, 3, 3)
    assert (arch.encoder_global_attn_indexes, arch.window_size, arch.img_size, arch.out_chans) == ((1,), 14, 1024, 256)
    assert [block.window_size for block in sam_encoder.blocks] == [14, 0, 14]


@pytest.mark.parametrize("case_index", [0, 1])
def test_proxyclip_parity(explainer, visual, rocket, cases, expected, sam_encoder, case_index):
    case = cases[case_index]
    pixels = clip_input(rocket, case["resolution"])
    features = explainer.text_features(case["labels"], IMAGENET_TEMPLATES)
    proxy = gm.proxy_embedding(sam_encoder, pixels)
    assert proxy.shape == (1, 256, 64, 64)
    tokens = gm.proxyclip_tokens(visual, record_trunk(visual, pixels), proxy)
    assert case["grid"]["proxyclip"] == 64 and tokens.shape == (1, 64 * 64, visual.proj.shape[1])
    row_errors = np.abs(label_map(tokens, features, 64, 64) - expected[f"case{case_index}_proxyclip"]).max(axis=0)
    away = rows_away_from_the_cut(proxy).reshape(64, 64)
    print(f"proxyclip case {case_index}: {int(away.sum())} of 4096 rows away from the cut, max error there "
          f"{row_errors[away].max():.2e}; near it {row_errors[~away].max():.2e}")
    assert away.mean() >= 0.8  # most rows decide nothing at the cut: the exact comparison covers them
    assert row_errors[away].max() <= TOLERANCE
    assert row_errors.max() <= PROXY_KERNEL_TOLERANCE


def rows_away_from_the_cut(proxy: torch.Tensor) -> np.ndarray:
    """(M,) True where none of a proxy position's attention logits (the independent port's) lies within
    NEAR_CUT of 0, the cut: the rows no kernel's rounding can flip."""
    return (oracle.proxy_logits(proxy[0].float()).abs().min(dim=1).values >= NEAR_CUT).numpy()


def test_proxyclip_needs_its_own_encoder_pass(explainer, visual, rocket, cases, expected, sam_checkpoint):
    """SAM's predictor embedding (longest-side resize of the original image, padded) is not ProxyCLIP's
    proxy: substituted, the map moves far beyond the tolerance. The checkpoint is loaded through
    `load_segmenter`, the app's path."""
    from surgery.loading import load_segmenter

    segmenter = load_segmenter(checkpoint=sam_checkpoint, device="cpu")
    case = cases[0]
    pixels = clip_input(rocket, case["resolution"])
    features = explainer.text_features(case["labels"], IMAGENET_TEMPLATES)
    predictor = segmenter.embed(rocket).features
    assert predictor.shape == (1, 256, 64, 64)
    substituted = label_map(gm.proxyclip_tokens(visual, record_trunk(visual, pixels), predictor), features, 64, 64)
    difference = float(np.abs(substituted - expected["case0_proxyclip"]).max())
    print(f"the predictor's embedding moves the map by {difference:.3f}")
    assert difference > 0.05


# --- (e) batches and grids ----------------------------------------------------------------------


def test_a_batch_is_independent_runs(explainer, visual, rocket):
    """Per-image statistics (outliers, similarity means, first-pass labels, proxy attention) stay per image.
    The proxy here is any (B, C, h, w) array: what is checked is how proxyclip_tokens treats a batch."""
    first = clip_input(rocket, 224)
    second = clip_input(np.ascontiguousarray(rocket[:, ::-1]), 224)
    proxies = torch.randn(2, 32, 24, 24, generator=torch.Generator().manual_seed(0))
    features = explainer.text_features(["rocket", "smoke", "sky"], IMAGENET_TEMPLATES)

    def all_methods(pixels: torch.Tensor, proxy: torch.Tensor) -> list[torch.Tensor]:
        record = full_record(visual, pixels)
        return [gm.scclip_tokens(visual, record), gm.resclip_tokens(visual, record, pixels, features),
                gm.proxyclip_tokens(visual, record, proxy)]

    batched = all_methods(torch.cat([first, second]), proxies)
    for b, pixels in enumerate((first, second)):
        for together, alone in zip(batched, all_methods(pixels, proxies[b:b + 1])):
            torch.testing.assert_close(together[b:b + 1], alone, atol=1e-5, rtol=0)
    for tokens in batched:
        assert not torch.allclose(tokens[0], tokens[1], atol=1e-3)  # two different images


def test_rectangular_grids(visual, rocket, sam_encoder):
    pixels = rectangular_input(rocket, 224, 320)
    record = full_record(visual, pixels)
    assert record.grid == (14, 20) and record.last.shape == (1, 14 * 20 + 1, 128)
    scclip = gm.scclip_tokens(visual, record)
    proxy = gm.proxyclip_tokens(visual, record, gm.proxy_embedding(sam_encoder, pixels))
    assert scclip.shape == (1, 14 * 20, 64) and proxy.shape == (1, 64 * 64, 64)
    assert torch.isfinite(scclip).all() and torch.isfinite(proxy).all()


def test_outlier_repair_reads_row_major_rectangular_grids():
    """An outlier at (row 1, col 4) of a 3 x 5 grid takes the mean of its in-grid neighbours that are
    not outliers (four: (0, 3) is one), read row-major (the official code's row index is i // rows);
    an outlier whose neighbours are all outliers keeps its value."""
    rows, cols = 3, 5
    patches = torch.arange(rows * cols, dtype=torch.float32).mul(10).view(1, rows * cols, 1)
    outliers = torch.tensor([1 * cols + 4, 0 * cols + 3])
    repaired = gm._repair(patches, outliers, rows, cols).view(rows, cols)
    grid = patches.view(rows, cols)
    assert repaired[1, 4] == (grid[0, 4] + grid[1, 3] + grid[2, 3] + grid[2, 4]) / 4
    assert repaired[0, 3] == (grid[0, 2] + grid[0, 4] + grid[1, 2] + grid[1, 3]) / 4
    changed = torch.ones(rows, cols, dtype=torch.bool)
    changed[1, 4] = changed[0, 3] = False
    assert torch.equal(repaired[changed], grid[changed])
    lonely = gm._repair(torch.ones(1, 4, 1), torch.tensor([0, 1, 2, 3]), 2, 2)
    assert torch.equal(lonely, torch.ones(1, 4, 1))


# --- (f) bad input ------------------------------------------------------------------------------


def test_bad_input(explainer, visual, rocket):
    small = full_record(visual, clip_input(rocket, 80))  # 5 x 5 = 25 patches: fewer than LOF's 30 neighbours
    with pytest.raises(InputError):
        gm.scclip_tokens(visual, small)
    record = record_trunk(visual, clip_input(rocket, 224))
    features = explainer.text_features(["rocket"], IMAGENET_TEMPLATES)
    with pytest.raises(ValueError):  # the blocks SC-CLIP reads were not kept
        gm.scclip_tokens(visual, record)
    with pytest.raises(ValueError):  # the RCS blocks' attention was not recorded
        gm.resclip_tokens(visual, record, clip_input(rocket, 224), features)
