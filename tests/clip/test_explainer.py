"""Engine behaviours that would each catch a real bug."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import surgery
from surgery.method.options import MapOptions
from surgery.request import build_request
from surgery.errors import InputError
from surgery.method.feature_surgery import surgery_across_labels
from surgery.clip.vit import encode_image_tokens
from surgery.method.labels import parse_labels
from surgery.clip.preprocess import clip_input
from surgery.images import load_image
from surgery.clip.text import encode_token_batch, prompt_ensemble
from surgery.loading import load_clip
from surgery.method.prompts import tokenize


def test_original_path_equals_open_clip_encode_image(explainer, rocket):
    model = explainer.model
    pixels = clip_input(rocket, 224)
    ours = encode_image_tokens(model.visual, pixels)
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        model.visual.output_tokens = True
        try:
            _, tokens = model.visual(pixels)
        finally:
            model.visual.output_tokens = False
    torch.testing.assert_close(ours.clip_tokens[:, 0], pooled, atol=1e-5, rtol=0)
    patches = torch.nn.functional.normalize(tokens @ model.visual.proj, dim=-1)
    torch.testing.assert_close(ours.clip_tokens[:, 1:], patches, atol=1e-5, rtol=0)
    # the surgery path carries the original CLS and different patches
    torch.testing.assert_close(ours.surgery_tokens[:, 0], ours.clip_tokens[:, 0])
    assert (ours.surgery_tokens[:, 1:] - ours.clip_tokens[:, 1:]).abs().max() > 1e-3


def test_truncated_text_encoding_equals_full_context(explainer):
    model = explainer.model
    texts = ["a photo of a rocket.", "a bad photo of the big red fire engine on a rainy day.", ""]
    tokens = tokenize(texts)
    with torch.no_grad():
        full = model.encode_text(tokens)
    torch.testing.assert_close(encode_token_batch(model, tokens), full, atol=2e-5, rtol=1e-5)
    assert int(tokens.argmax(-1).max()) + 1 < 77  # the fast path really is shorter


def test_prompt_ensemble_rows_do_not_depend_on_batch(explainer):
    alone = prompt_ensemble(explainer.model, ["smoke"])
    together = prompt_ensemble(explainer.model, ["a very long label about a rocket launch pad", "smoke"])
    torch.testing.assert_close(alone[0], together[1], atol=2e-6, rtol=0)


def test_single_label_across_labels_is_refused(explainer, rocket):
    tokens = explainer.image_tokens(rocket, 224)
    one = explainer.text_features(["rocket"])
    assert torch.count_nonzero(surgery_across_labels(tokens.surgery_tokens, one)) == 0  # the trap itself
    with pytest.raises(InputError, match="at least two labels"):  # refused where a request comes in
        surgery.compute_maps(explainer, rocket, "rocket", MapOptions(224, "labels"))
    with pytest.raises(InputError, match="at least two labels"):
        build_request("rocket", resolution=224, redundancy="labels")
    for mode in ("vocab", "empty"):
        maps = explainer.compute_maps(rocket, parse_labels("rocket").labels, MapOptions(224, mode))
        assert np.ptp(maps.labels[0].maps["surgery"]) > 0


def test_no_positional_embedding_drift(explainer, rocket):
    visual = explainer.model.visual
    before = visual.positional_embedding.detach().clone()
    first = encode_image_tokens(visual, clip_input(rocket, 224)).surgery_tokens
    encode_image_tokens(visual, clip_input(rocket, 448))
    encode_image_tokens(visual, clip_input(rocket, 336))
    again = encode_image_tokens(visual, clip_input(rocket, 224)).surgery_tokens
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    torch.testing.assert_close(visual.positional_embedding, before, atol=0, rtol=0)


def test_resolution_must_be_patch_multiple(explainer, rocket):
    with pytest.raises(InputError, match="multiple of the patch size 16"):
        explainer.check_fits(MapOptions(230))
    with pytest.raises(InputError, match="multiple of the patch size 16"):
        surgery.compute_maps(explainer, rocket, "rocket", MapOptions(230))
    for bad in (200, 2048):  # outside the range whatever the model
        with pytest.raises(InputError, match="between 224 and 1024"):
            MapOptions(bad)


def _jpeg_with_orientation(pixels: np.ndarray, orientation: int) -> bytes:
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def test_exif_rotation_is_applied(explainer):
    # Landscape content whose left half is red: stored rotated, tagged "rotate 90° CW to view".
    upright = np.zeros((60, 100, 3), dtype=np.uint8)
    upright[:, :50] = (255, 0, 0)
    stored = np.rot90(upright, k=1).copy()  # what a camera writes for orientation 6
    decoded = load_image(_jpeg_with_orientation(stored, 6))
    assert decoded.shape == (60, 100, 3)
    assert decoded[:, :40, 0].mean() > 200 and decoded[:, 60:, 0].mean() < 60
    maps = explainer.compute_maps(decoded, parse_labels("red, blue").labels, MapOptions(224, "labels"))
    assert (maps.width, maps.height) == (100, 60)


def _image_encoder_calls(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "surgery.calls" and "CLIP image encoder" in r.getMessage()]


def test_image_tokens_are_cached_per_image_and_resolution(explainer, rocket, caplog):
    # Images no other test encodes, so the counts below are exact whatever ran before.
    original = np.ascontiguousarray(rocket[::-1])
    flipped = np.ascontiguousarray(original[:, ::-1])  # same size, other pixels
    before = explainer.image_encodings
    with caplog.at_level("INFO", logger="surgery.calls"):
        explainer.compute_maps(original, parse_labels("a, b").labels, MapOptions(224, "labels"))
        explainer.compute_maps(original, parse_labels("c, d").labels, MapOptions(224, "labels"))
        assert explainer.image_encodings - before == 1  # new labels, same image: no second encoding
        explainer.compute_maps(original, parse_labels("c, d").labels, MapOptions(256, "labels"))
        assert explainer.image_encodings - before == 2  # another resolution is another encoding
        explainer.compute_maps(flipped, parse_labels("c, d").labels, MapOptions(256, "labels"))
        assert explainer.image_encodings - before == 3  # another image of the same size too
    assert len(_image_encoder_calls(caplog)) == 3


def test_different_images_of_one_size_get_their_own_tokens(explainer, caplog):
    rng = np.random.default_rng(17)
    first = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    second = first.copy()
    second[20:70, 30:90] = 255 - second[20:70, 30:90]  # same shape, dtype and most pixels
    before = explainer.image_encodings
    with caplog.at_level("INFO", logger="surgery.calls"):
        a = explainer.image_tokens(first, 224)
        b = explainer.image_tokens(second, 224)
    assert explainer.image_encodings - before == 2 and len(_image_encoder_calls(caplog)) == 2
    assert (a.surgery_tokens - b.surgery_tokens).abs().max() > 1e-3
    assert (a.clip_tokens - b.clip_tokens).abs().max() > 1e-3


def test_the_same_pixels_decoded_twice_are_encoded_once(explainer, tmp_path, caplog):
    rng = np.random.default_rng(23)
    pixels = rng.integers(0, 256, (80, 112, 3), dtype=np.uint8)
    path = tmp_path / "upload.png"
    Image.fromarray(pixels).save(path)
    one, two = load_image(path), load_image(path)  # two decodes: two distinct arrays, equal pixels
    assert one is not two and not np.shares_memory(one, two) and np.array_equal(one, pixels)
    before = explainer.image_encodings
    with caplog.at_level("INFO", logger="surgery.calls"):
        first = explainer.image_tokens(one, 224)
        again = explainer.image_tokens(two, 224)
        copied = explainer.image_tokens(pixels.copy(), 224)
    assert explainer.image_encodings - before == 1 and len(_image_encoder_calls(caplog)) == 1
    assert again is first and copied is first


def test_combined_label_uses_parts(explainer, rocket):
    maps = explainer.compute_maps(rocket, parse_labels("rocket+smoke, sky").labels, MapOptions(224, "vocab"))
    combined = maps.labels[0]
    assert combined.label.parts == ("rocket", "smoke") and combined.parts["surgery"].shape == (2, 14, 14)
    assert 0.0 <= combined.maps["surgery"].min() and combined.maps["surgery"].max() <= 1.0


def test_label_embeddings_survive_a_restart_through_the_disk_cache(tmp_path, rocket):
    from conftest import TINY_CLIP

    first = load_clip(checkpoint=TINY_CLIP, display_name="tiny", text_cache_dir=tmp_path)
    features = first.text_features(["rocket", "launch pad"])
    assert len(list(tmp_path.rglob("*.npy"))) == 2
    restarted = load_clip(checkpoint=TINY_CLIP, display_name="tiny", text_cache_dir=tmp_path)
    restarted.model.token_embedding.weight.data.zero_()  # a recomputation would now differ
    torch.testing.assert_close(restarted.text_features(["rocket", "launch pad"]), features, atol=0, rtol=0)
    other = restarted.text_features(["smoke"])  # not stored: computed with the (zeroed) model
    assert other.shape == (1, features.shape[1])


def test_bf16_maps_agree_with_fp32_and_are_cached_apart(explainer, rocket, caplog):
    from surgery.precision import bf16_supported

    labels = parse_labels("rocket, smoke").labels
    fp32 = explainer.compute_maps(rocket, labels, MapOptions(224, "labels"))
    if not bf16_supported("cpu"):
        with pytest.raises(InputError, match="bf16 is not supported"):
            surgery.compute_maps(explainer, rocket, labels, MapOptions(224, "labels", precision="bf16"))
        return
    with caplog.at_level("INFO", logger="surgery.calls"):
        bf16 = explainer.compute_maps(rocket, labels, MapOptions(224, "labels", precision="bf16"))
    calls = [r.getMessage() for r in caplog.records if r.name == "surgery.calls"]
    assert any("image encoder" in c for c in calls), calls  # the image tokens are bf16's own
    assert not any("text encoder" in c for c in calls), calls  # text features are float32, shared
    for a, b in zip(fp32.labels, bf16.labels):
        assert a.maps["surgery"].dtype == b.maps["surgery"].dtype == np.float32
        assert not np.array_equal(a.maps["surgery"], b.maps["surgery"])  # really ran in bf16, not a cache hit
        correlation = np.corrcoef(a.maps["surgery"].ravel(), b.maps["surgery"].ravel())[0, 1]
        assert correlation > 0.95
    with pytest.raises(InputError, match="Precision must be one of"):
        MapOptions(224, "labels", precision="fp8")
    with pytest.raises(InputError, match="fp16 runs on a GPU only"):  # a CPU has no fp16 autocast worth having
        surgery.compute_maps(explainer, rocket, labels, MapOptions(224, "labels", precision="fp16"))
    with pytest.raises(InputError, match="fp16 runs on a GPU only"):
        build_request("rocket, smoke", precision="fp16", device="cpu")


def test_prefix_cached_prompts_equal_the_plain_ensemble(explainer):
    from surgery.clip.prompt_prefix import PrefixEncoder

    encoder = PrefixEncoder(explainer.model)
    labels = ["rocket", "launch pad at night", "café", "🐱", "don't", ""]
    assert encoder._sequences("🐱") is None  # BPE merges across the template boundary: plain path
    assert encoder._sequences("rocket") is not None
    torch.testing.assert_close(encoder.ensemble(labels), prompt_ensemble(explainer.model, labels),
                               atol=5e-7, rtol=0)
    alone = encoder.ensemble(["launch pad at night"])
    together = encoder.ensemble(["big red fire truck", "launch pad at night", "sky"])
    assert torch.equal(alone[0], together[1])  # a label's feature never depends on the others
