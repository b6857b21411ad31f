"""SAM 2.1: the architecture read from a checkpoint, the segmenter against Meta's `SAM2ImagePredictor`,
the cache and decode-only paths, refusals, the real loader, the registry and the CLI.

Real weights are never available, so every model is a random checkpoint written by the official
package's network in the release format (`{"model": state_dict}`) and read back through the
project's loader. The reference side is built only by Meta's code: `sam2.build_sam.build_sam2` from
the package's own hydra config (with the small test layout as overrides) and its own checkpoint
loader, then `SAM2ImagePredictor`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import random_sam2_state_dict, write_random_sam2_checkpoint, write_random_sam_checkpoint
from checkpoints import SMALL_ARCH as SAM_SMALL_ARCH
from conftest import PARITY, TINY_CLIP
from hub_cache import offline_env, place_in_hub_cache

from surgery.errors import CheckpointError, InputError
from surgery.hub.registry import DEFAULT_SAM_CPU, DEFAULT_SAM_GPU, SAM_CHECKPOINTS, default_sam_model
from surgery.loading import load_segmenter
from surgery.output.files import label_slug
from surgery.precision import resolve_precision, bf16_supported
from surgery.sam.sam2_architecture import (
    RELEASED_SAM2,
    SAM2_ARCHITECTURES,
    build_sam2_model,
    make_sam2,
    read_sam2_architecture,
)
from surgery.sam.sam2_segmenter import Sam2Segmenter
from surgery.sam.segmenter import ImageEmbedding, SamSegmenter

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[2]

OFFICIAL_CONFIGS = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
# The small test layout written as overrides of Meta's hiera-tiny config (by hand, from its numbers:
# nothing here comes from the code under test).
TEST_LAYOUT_OVERRIDES = [
    "model.image_encoder.trunk.embed_dim=16",
    "model.image_encoder.trunk.num_heads=1",
    "model.image_encoder.trunk.stages=[1,1,2,2]",
    "model.image_encoder.trunk.global_att_blocks=[3]",
    "model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "model.image_encoder.neck.d_model=32",
    "model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "model.memory_attention.d_model=32",
    "model.memory_attention.num_layers=1",
    "model.memory_attention.layer.d_model=32",
    "model.memory_attention.layer.dim_feedforward=64",
    "model.memory_attention.layer.self_attention.embedding_dim=32",
    "model.memory_attention.layer.cross_attention.embedding_dim=32",
    "model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "model.memory_encoder.out_dim=16",
    "model.memory_encoder.position_encoding.num_pos_feats=16",
    "++model.memory_encoder.in_dim=32",
    "++model.memory_encoder.mask_downsampler.embed_dim=32",
    "model.memory_encoder.fuser.layer.dim=32",
    "model.memory_encoder.fuser.num_layers=1",
]


def official_model(config: str, checkpoint: Path | None = None, overrides: tuple[str, ...] = ()):
    """Meta's own construction: hydra config + `build_sam2` (+ its `_load_checkpoint`), on the CPU."""
    from sam2.build_sam import build_sam2

    return build_sam2(config, None if checkpoint is None else str(checkpoint), device="cpu",
                      hydra_overrides_extra=list(overrides))


def describe(module: torch.nn.Module) -> list[tuple]:
    """Every submodule's name, class and plain settings (window sizes, heads, flags...), and every
    tensor's name and shape: equal descriptions mean the same network up to its weights."""
    from omegaconf import OmegaConf

    def plain_value(value):
        if OmegaConf.is_config(value):  # what hydra passes for a mapping or a list
            value = OmegaConf.to_container(value)
        if isinstance(value, dict):  # settings, or a cache of tensors (skipped)
            return tuple(sorted((k, plain_value(v)) for k, v in value.items() if not isinstance(v, torch.Tensor)))
        return tuple(value) if isinstance(value, list) else value

    settings = []
    for name, sub in module.named_modules():
        plain = {}
        for key, value in vars(sub).items():
            if key.startswith("_") or key == "training" or callable(value) or isinstance(value, torch.Tensor):
                continue
            plain[key] = plain_value(value)
        settings.append((name, type(sub).__name__, sorted(plain.items(), key=lambda kv: kv[0])))
    shapes = [(name, tuple(t.shape)) for name, t in module.state_dict().items()]
    return [tuple(settings), tuple(shapes)]


# --- architecture and construction -------------------------------------------------------------


@pytest.mark.parametrize("name", RELEASED_SAM2)
def test_each_release_layout_is_read_back_and_built_like_metas_config(name):
    official = official_model(OFFICIAL_CONFIGS[name])
    arch = read_sam2_architecture(official.state_dict())
    assert arch.name == name
    assert describe(make_sam2(arch)) == describe(official)


def test_the_test_layout_is_read_back_and_built_like_metas_config_with_its_overrides():
    official = official_model(OFFICIAL_CONFIGS["sam2.1_hiera_tiny"], overrides=tuple(TEST_LAYOUT_OVERRIDES))
    arch = read_sam2_architecture(official.state_dict())
    assert arch is SAM2_ARCHITECTURES["test"]
    assert describe(make_sam2(arch)) == describe(official)
    # Structurally complete: windowed and global blocks, windows of 14 and 7 padded (64 → 70, 32 → 35);
    # a stage's first block keeps the previous stage's window (Hiera's rule).
    windows = [block.window_size for block in official.image_encoder.trunk.blocks]
    assert windows == [8, 8, 4, 0, 14, 7]
    assert sum(v.numel() for v in official.state_dict().values()) < 1_500_000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The small test layout in the release format."""
    return write_random_sam2_checkpoint(tmp_path_factory.mktemp("sam2") / "sam2.1_test.pt", "test", seed=1)


@pytest.fixture(scope="module")
def segmenter(checkpoint) -> Sam2Segmenter:
    loaded = load_segmenter("sam2.1_hiera_tiny", checkpoint=checkpoint, device="cpu")
    assert isinstance(loaded, Sam2Segmenter)
    return loaded


@pytest.fixture(scope="module")
def reference(checkpoint):
    """Meta's SAM2ImagePredictor on Meta's construction of the same file."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model = official_model(OFFICIAL_CONFIGS["sam2.1_hiera_tiny"], checkpoint, tuple(TEST_LAYOUT_OVERRIDES))
    return SAM2ImagePredictor(model)


def test_the_release_file_loads_with_its_weights_strictly(checkpoint, segmenter):
    model = segmenter.model
    written = torch.load(checkpoint, weights_only=True)["model"]
    loaded = model.state_dict()
    assert loaded.keys() == written.keys()
    assert all(torch.equal(loaded[k], written[k]) for k in written)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert segmenter.name == checkpoint.name and segmenter.model_id.startswith("sam2.1@")


def test_a_plain_safetensors_state_dict_loads_too(tmp_path):
    path = write_random_sam2_checkpoint(tmp_path / "plain.safetensors", "test", seed=2)
    assert isinstance(load_segmenter(checkpoint=path, device="cpu"), Sam2Segmenter)


def test_the_family_comes_from_the_file_not_the_name(tmp_path, checkpoint):
    """A SAM 2.1 file named vit_b is still built as SAM 2.1, and a SAM file named sam2.1 as SAM."""
    assert isinstance(load_segmenter("vit_b", checkpoint=checkpoint, device="cpu"), Sam2Segmenter)
    sam_file = write_random_sam_checkpoint(tmp_path / "sam.pth", SAM_SMALL_ARCH, seed=1)
    assert isinstance(load_segmenter("sam2.1_hiera_tiny", checkpoint=sam_file, device="cpu"), SamSegmenter)


def test_bad_sam2_checkpoints_are_one_line_checkpoint_errors(tmp_path, checkpoint):
    weights = random_sam2_state_dict("test", seed=3)
    sam2_0 = {k: v for k, v in weights.items() if not k.startswith(("no_obj_embed_spatial", "obj_ptr_tpos_proj"))}
    unknown = {k: v for k, v in weights.items() if not k.startswith("image_encoder.trunk.blocks.5.")}
    gap = {k: v for k, v in weights.items() if not k.startswith("image_encoder.trunk.blocks.4.")}
    incomplete = {k: v for k, v in weights.items() if k != "sam_mask_decoder.conv_s0.weight"}
    misshapen = dict(weights, **{"sam_mask_decoder.iou_token.weight": torch.zeros(1, 7)})
    for broken, message in [(sam2_0, "SAM 2 \\(2.0\\) checkpoint"), (unknown, "none of the known configurations"),
                            (gap, "numbered \\[0, 1, 2, 3, 5\\]"),
                            (incomplete, "missing: sam_mask_decoder.conv_s0.weight"), (misshapen, "wrong shape")]:
        with pytest.raises(CheckpointError, match=message) as error:
            build_sam2_model(broken)
        assert "\n" not in str(error.value)
    prefixed = {f"module.{k}": v for k, v in weights.items()}
    assert read_sam2_architecture(prefixed).name == "test"
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:20000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_segmenter(checkpoint=truncated, device="cpu")


# --- the segmenter against SAM2ImagePredictor ------------------------------------------------------


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """Blocky colour regions with noise: masks of random weights follow them, so masks are not trivial."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (height // 10 + 1, width // 10 + 1, 3)).repeat(10, axis=0).repeat(10, axis=1)
    noisy = blocks[:height, :width] + rng.integers(-20, 20, (height, width, 3))
    return noisy.clip(0, 255).astype(np.uint8)


def rocket() -> np.ndarray:
    from surgery.images import load_image

    return load_image(PARITY / "rocket.png")  # 640×427, a photograph


IMAGES = {
    "wide": lambda: smooth_image(120, 200, 0),
    "tall": lambda: smooth_image(190, 70, 1),
    "square": lambda: smooth_image(64, 64, 2),
    "rocket": rocket,
}


def point_sets(height: int, width: int) -> list[np.ndarray]:
    return [np.array(p) for p in (
        [[width // 4, height // 3, 1]],
        [[width - 1, height - 1, 1]],
        [[5, 5, 1], [width // 2, height // 2, 0]],
        [[width // 3, height // 2, 1], [width // 3 + 3, height // 2 + 2, 1], [width - 10, 4, 0]],
        [[width // 2, height // 4, 0], [width // 5, 3 * height // 4, 1]],
    )]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("image_name", list(IMAGES))
def test_masks_and_scores_equal_sam2_image_predictor(segmenter, reference, image_name):
    image = IMAGES[image_name]()
    height, width = image.shape[:2]
    reference.set_image(image)
    embedding = segmenter.embed(image)
    assert embedding.original_size == (height, width) and embedding.input_size == (1024, 1024)
    nontrivial = 0
    for points in point_sets(height, width):
        masks, scores, _ = reference.predict(point_coords=points[:, :2].astype(np.float64),
                                             point_labels=points[:, 2], multimask_output=True)
        prediction = segmenter.predict(embedding, points)
        assert prediction.candidates.shape == (3, height, width) and prediction.candidates.dtype == bool
        assert prediction.scores.shape == (3,) and prediction.scores.dtype == np.float32
        np.testing.assert_allclose(prediction.scores, scores, atol=1e-3)
        assert prediction.best == int(np.argmax(scores))
        assert iou(prediction.mask, masks[int(np.argmax(scores))]) >= 0.99
        assert all(iou(prediction.candidates[i], masks[i]) >= 0.99 for i in range(3))
        nontrivial += 0.01 < prediction.mask.mean() < 0.99
    assert nontrivial >= 3  # random weights, but the comparison is not between empty or full masks


def test_prompts_change_the_mask(segmenter):
    image = IMAGES["wide"]()
    embedding = segmenter.embed(image)
    masks = [segmenter.predict(embedding, points).mask for points in point_sets(*image.shape[:2])]
    assert any(not np.array_equal(masks[0], m) for m in masks[1:])


# --- cache, decode-only, predict_many ------------------------------------------------------------


def test_one_encoding_per_image_and_decodes_call_no_encoder(checkpoint, calls):
    segmenter = load_segmenter(checkpoint=checkpoint, device="cpu", precision="fp32")
    segmenter.cache_entries = 2
    image, other = IMAGES["wide"](), IMAGES["tall"]()
    embedding = segmenter.embed(image)
    assert calls.count("SAM image encoder") == 1 and segmenter.encode_calls == 1
    assert segmenter.embed(image.copy()) is embedding  # equal pixels: the cached value
    calls.clear()
    for points in point_sets(*image.shape[:2]):  # threshold moves / clicks: decoder only
        segmenter.predict(segmenter.embed(image), points)
    assert calls.count("SAM image encoder") == 0 and calls.count("SAM mask decoder") == 5
    assert segmenter.encode_calls == 1
    segmenter.embed(other)
    assert segmenter.encode_calls == 2 and len(segmenter.cached_keys()) == 2
    assert all(key.startswith(segmenter.model_id + ":") for key in segmenter.cached_keys())


def test_concurrent_requests_encode_once(checkpoint):
    segmenter = load_segmenter(checkpoint=checkpoint, device="cpu")
    image = IMAGES["square"]()
    results, errors = [], []

    def request(points):
        try:
            results.append(segmenter.predict(segmenter.embed(image), points))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    points = point_sets(*image.shape[:2])[:2]
    threads = [threading.Thread(target=request, args=(points[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 4 and segmenter.encode_calls == 1


def test_predict_many_is_predict_for_each_prompt_and_embeddings_travel(segmenter):
    image = IMAGES["tall"]()
    embedding = segmenter.embed(image)
    prompts = point_sets(*image.shape[:2])
    many = segmenter.predict_many(embedding, prompts)
    assert len(many) == len(prompts)
    for prompt, prediction in zip(prompts, many):
        single = segmenter.predict(embedding, prompt)
        np.testing.assert_array_equal(prediction.candidates, single.candidates)
        np.testing.assert_array_equal(prediction.scores, single.scores)
    moved = embedding.to("cpu")  # what a ZeroGPU task hands back
    assert isinstance(moved, ImageEmbedding) and len(moved.high_res_features) == 2
    assert [tuple(t.shape) for t in moved.high_res_features] == [(1, 4, 256, 256), (1, 8, 128, 128)]
    np.testing.assert_array_equal(segmenter.predict(moved, prompts[0]).candidates, many[0].candidates)


# --- refusals ------------------------------------------------------------------------------------


def test_bad_requests_are_one_line_input_errors(segmenter, checkpoint, tmp_path):
    image = IMAGES["wide"]()  # 200 wide, 120 high
    embedding = segmenter.embed(image)
    sam = load_segmenter(checkpoint=write_random_sam_checkpoint(tmp_path / "sam.pth", SAM_SMALL_ARCH), device="cpu")
    other_sam2 = load_segmenter(checkpoint=checkpoint, device="cpu")
    cases = [
        (lambda: segmenter.predict(embedding, np.zeros((0, 3), dtype=int)), "at least one point"),
        (lambda: segmenter.predict(embedding, np.array([[200, 5, 1]])), "outside the 200×120 image"),
        (lambda: segmenter.predict(embedding, np.array([[5, 120, 1]])), "outside"),
        (lambda: segmenter.predict(embedding, np.array([[-1, 5, 1]])), "outside"),
        (lambda: segmenter.predict(embedding, np.array([[5, 5]])), "x, y, label"),
        (lambda: segmenter.predict(embedding, np.array([5, 5, 1])), "x, y, label"),
        (lambda: segmenter.predict(embedding, np.array([[5, 5, 2]])), "labels"),
        (lambda: segmenter.predict(sam.embed(image), np.array([[5, 5, 1]])), "different SAM model"),
        (lambda: sam.predict(embedding, np.array([[5, 5, 1]])), "different SAM model"),
        (lambda: other_sam2.predict(embedding, np.array([[5, 5, 1]])), "different SAM model"),
        (lambda: segmenter.embed(image.astype(np.float32)), "uint8"),
        (lambda: segmenter.embed(image[..., 0]), "RGB"),
        (lambda: segmenter.embed(image[..., :2].copy()), "RGB"),
        # a precision is refused where a request comes in (surgery.request), for the model's device
        (lambda: resolve_precision("int8", segmenter.device), "unknown precision"),
        (lambda: resolve_precision("fp16", segmenter.device), "fp16 runs on a GPU only"),
        (lambda: Sam2Segmenter(segmenter.model, cache_entries=0), "at least one image"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


def test_bf16_is_close_to_fp32_or_refused(segmenter):
    if not bf16_supported("cpu"):
        with pytest.raises(InputError, match="bf16 is not supported on this CPU; use fp32"):
            Sam2Segmenter(segmenter.model, precision="bf16")
        return
    bf16 = Sam2Segmenter(segmenter.model, precision="bf16")
    image = IMAGES["wide"]()
    e32, e16 = segmenter.embed(image), bf16.embed(image)
    assert e16.features.dtype == torch.float32 and all(t.dtype == torch.float32 for t in e16.high_res_features)
    assert (e32.features - e16.features).abs().mean() < 0.05 * e32.features.abs().mean()
    points = point_sets(*image.shape[:2])[2]
    a, b = segmenter.predict(e32, points), bf16.predict(e16, points)
    np.testing.assert_allclose(a.scores, b.scores, atol=0.05)
    assert (a.candidates != b.candidates).mean() < 0.05


# --- registry, defaults, download path, CLI ------------------------------------------------------


def test_registry_rows_are_metas_repositories_and_release_files():
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES  # Meta's own table

    for name in RELEASED_SAM2:
        entry = SAM_CHECKPOINTS[name]
        assert entry.name == name and entry.repo_id.startswith("facebook/sam2.1-hiera-")
        assert HF_MODEL_ID_TO_FILENAMES[entry.repo_id][1] == entry.filename == f"{name}.pt"
        assert entry.sha256 is None and entry.sha256_prefix is None  # none published: first download recorded
    assert list(SAM_CHECKPOINTS)[:3] == ["vit_b", "vit_l", "vit_h"]  # SAM stays selectable
    assert (DEFAULT_SAM_CPU, DEFAULT_SAM_GPU) == ("sam2.1_hiera_tiny", "sam2.1_hiera_large")
    assert default_sam_model(runs_on_gpu=False) == "sam2.1_hiera_tiny"
    assert default_sam_model(runs_on_gpu=True) == "sam2.1_hiera_large"


def test_cli_offers_every_sam_model():
    from surgery.cli import build_parser

    explain = build_parser()._subparsers._group_actions[0].choices["explain"]
    sam_model = next(a for a in explain._actions if a.dest == "sam_model")
    assert list(sam_model.choices) == list(SAM_CHECKPOINTS) and len(SAM_CHECKPOINTS) == 7


def test_a_registry_name_loads_from_the_hub_cache_and_records_its_digest(tmp_path, checkpoint):
    """`load_segmenter("sam2.1_hiera_tiny")` with the file in the (offline) hub cache: the real download
    path, in a fresh interpreter since huggingface_hub reads its environment at import."""
    entry = SAM_CHECKPOINTS["sam2.1_hiera_tiny"]
    hub, cache = tmp_path / "hub", tmp_path / "cache"
    place_in_hub_cache(hub, entry.repo_id, entry.filename, checkpoint)
    code = (
        "import numpy as np, hashlib\n"
        "from surgery.loading import load_segmenter\n"
        "from surgery.hub.download import digest_record\n"
        "from surgery.hub.registry import SAM_CHECKPOINTS\n"
        "s = load_segmenter('sam2.1_hiera_tiny', device='cpu')\n"
        "image = np.zeros((40, 60, 3), np.uint8); image[10:30, 20:40] = 200\n"
        "p = s.predict(s.embed(image), np.array([[30, 20, 1]]))\n"
        "print(type(s).__name__, s.name, p.candidates.shape)\n"
        "print(digest_record(SAM_CHECKPOINTS['sam2.1_hiera_tiny']).read_text())\n"
    )
    env = dict(offline_env(hub), CLIP_SURGERY_CACHE=str(cache))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    first, digest = done.stdout.splitlines()[:2]
    assert first == "Sam2Segmenter sam2.1_hiera_tiny (3, 40, 60)"
    import hashlib

    assert digest == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_cli_explain_with_a_sam2_checkpoint_writes_masks(tmp_path, checkpoint):
    from surgery.cli import main

    out = tmp_path / "out"
    code = main(["explain", str(PARITY / "rocket.png"), "--labels", "rocket, sky", "--clip-checkpoint",
                 str(TINY_CLIP), "--sam-model", "sam2.1_hiera_tiny", "--sam-checkpoint", str(checkpoint),
                 "--threshold", "0", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "rocket" / "result.json").read_text())
    assert result["sam_model"] == checkpoint.name
    masked = [entry for entry in result["labels"] if entry.get("mask_candidates")]
    assert masked, result["labels"]
    for entry in masked:
        assert len(entry["mask_candidates"]) == 3 and entry["mask_choice"] in (0, 1, 2)
        slug = label_slug(entry["label"])
        assert (out / "rocket" / f"mask_{slug}.png").is_file()


# --- on a CUDA GPU (marked `gpu`: skipped, with the reason shown, where there is none) ------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("image_name", ["wide", "rocket"])
def test_gpu_masks_equal_the_cpu_masks_and_embeddings_travel(checkpoint, image_name):
    image = IMAGES[image_name]()
    cpu = load_segmenter(checkpoint=checkpoint, device="cpu")
    gpu = load_segmenter(checkpoint=checkpoint, device="cuda", precision="fp32")
    on_gpu = gpu.embed(image)
    assert on_gpu.features.is_cuda and all(t.is_cuda for t in on_gpu.high_res_features)
    for points in point_sets(*image.shape[:2]):
        a, b = cpu.predict(cpu.embed(image), points), gpu.predict(on_gpu, points)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)
        assert iou(a.mask, b.mask) >= 0.99
        # ZeroGPU hands embeddings back on the CPU; the next task decodes them on the GPU.
        np.testing.assert_array_equal(gpu.predict(on_gpu.to("cpu"), points).candidates, b.candidates)


@pytest.mark.gpu
@needs_cuda
def test_gpu_bf16_is_close_to_fp32(checkpoint):
    image = IMAGES["rocket"]()
    fp32 = load_segmenter(checkpoint=checkpoint, device="cuda", precision="fp32")
    bf16 = load_segmenter(checkpoint=checkpoint, device="cuda", precision="bf16")
    a, b = fp32.embed(image), bf16.embed(image)
    assert b.features.dtype == torch.float32 and all(t.dtype == torch.float32 for t in b.high_res_features)
    assert torch.corrcoef(torch.stack([a.features.flatten(), b.features.flatten()]))[0, 1] > 0.95
    points = point_sets(*image.shape[:2])[2]
    pa, pb = fp32.predict(a, points), bf16.predict(b, points)
    np.testing.assert_allclose(pa.scores, pb.scores, atol=0.05)
    assert (pa.candidates != pb.candidates).mean() < 0.05
