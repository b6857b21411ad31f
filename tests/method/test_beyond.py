"""Presence, threshold suggestion, instances, mask choice and the COCO export."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from surgery.output.coco import coco_document, decode_rle, encode_rle, mask_box
from surgery.method.options import MapOptions
from surgery.method.results import LabelMaps, MapsResult
from surgery.method.options import PointOptions
from surgery.method.views import apply_threshold, decode_masks, with_choices
from surgery.method.feature_surgery import presence_probabilities
from surgery.method.labels import parse_labels
from surgery.method.threshold import otsu_threshold
from surgery.method.points import instance_points


def test_presence_sums_to_one_over_the_label_set(explainer, rocket):
    maps = explainer.compute_maps(rocket, parse_labels("rocket, smoke, sky").labels, MapOptions(224, "labels"))
    total = sum(lm.presence for lm in maps.labels)
    assert total == pytest.approx(1.0, abs=1e-5)
    with_vocab = explainer.compute_maps(rocket, parse_labels("rocket, smoke").labels, MapOptions(224, "vocab"))
    assert 0 < sum(lm.presence for lm in with_vocab.labels) < 1  # the vocabulary takes the rest


def test_presence_of_an_absent_label_is_low():
    torch.manual_seed(0)
    present, absent = torch.nn.functional.normalize(torch.randn(2, 64), dim=-1)
    cls = torch.nn.functional.normalize(present + 0.1 * torch.randn(64), dim=-1)
    probabilities = presence_probabilities(cls, torch.stack([present, absent]), logit_scale=100.0)
    assert probabilities.sum().item() == pytest.approx(1.0)
    assert probabilities[1] < 0.01 < 0.99 < probabilities[0]


def test_otsu_lands_between_the_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(-0.05, 0.01, 3000), rng.normal(0.08, 0.01, 800)])
    cut = otsu_threshold(values)
    assert -0.02 < cut < 0.05
    assert otsu_threshold(np.full(10, 0.3)) is None


def _two_blobs() -> np.ndarray:
    raw = np.zeros((28, 28), dtype=np.float32)
    raw[2:8, 2:8] = 1.0
    raw[20:26, 18:24] = 0.9
    return raw


def test_two_separated_blobs_give_two_instances_with_disjoint_points():
    regions = instance_points(_two_blobs(), 560, 560)
    assert len(regions) == 2
    first, second = ({tuple(p[:2]) for p in region if p[2] == 1} for region in regions)
    assert first and second and not first & second
    assert all(x < 200 and y < 200 for x, y in first)  # stronger blob first, top-left
    assert all(x > 300 and y > 350 for x, y in second)
    for region in regions:  # each region has as many negatives as positives
        assert (region[:, 2] == 1).sum() == (region[:, 2] == 0).sum()


def _hand_built_maps() -> MapsResult:
    """'bird' has two separated hot blobs by construction, 'sky' a single one (28 x 28 grid, 560 px)."""
    one_blob = np.zeros((28, 28), dtype=np.float32)
    one_blob[12:18, 4:10] = 1.0
    labels = parse_labels("bird, sky").labels
    label_maps = tuple(LabelMaps(label, parts={"clip": raw[None], "surgery": raw[None]},
                                 maps={"clip": raw, "surgery": raw}, presence=0.5, points_from="surgery")
                       for label, raw in zip(labels, (_two_blobs(), one_blob)))
    return MapsResult(width=560, height=560, options=MapOptions(448, "labels"), labels=label_maps)


@pytest.fixture(scope="module")
def tiny_sam_on_grey():
    """The real tiny SAM and the embedding of a plain 560 x 560 image."""
    from conftest import DATA
    from surgery.sam.architecture import load_sam
    from surgery.sam.segmenter import SamSegmenter

    segmenter = SamSegmenter(load_sam(DATA / "sam_tiny.safetensors"))
    return segmenter, segmenter.embed(np.full((560, 560, 3), 128, dtype=np.uint8))


def _decode_counting(explanation, sam, caplog):
    """decode_masks with the real decoder; the prompts it got, and the decoder calls the engine logged."""
    segmenter, embedding = sam
    prompts = []

    def predict(points):
        prompts.append(points.copy())
        return segmenter.predict(embedding, points)

    caplog.clear()
    with caplog.at_level("INFO", logger="surgery.calls"):
        decoded = decode_masks(explanation, predict)
    logged = [r.getMessage() for r in caplog.records
              if r.name == "surgery.calls" and "SAM mask decoder" in r.getMessage()]
    return decoded, prompts, logged


def test_instances_option_makes_one_decoder_call_per_region(tiny_sam_on_grey, caplog):
    maps = _hand_built_maps()
    decoded, prompts, logged = _decode_counting(apply_threshold(maps, None, PointOptions(instances=True)),
                                                tiny_sam_on_grey, caplog)
    assert len(prompts) == len(logged) == 3  # bird: two regions, two calls; sky: one
    bird, sky = decoded.labels
    assert len(bird.instances) == 2 and len(sky.instances) == 1
    assert all(inst.mask is not None for inst in bird.instances + sky.instances)
    top_left, bottom_right = ({tuple(p[:2]) for p in prompt if p[2] == 1} for prompt in prompts[:2])
    assert top_left and all(x < 200 and y < 200 for x, y in top_left)  # one prompt per blob
    assert bottom_right and all(x > 300 and y > 350 for x, y in bottom_right)
    assert np.array_equal(np.concatenate([i.points for i in bird.instances]), bird.points)
    union = bird.instances[0].mask.mask | bird.instances[1].mask.mask
    assert np.array_equal(bird.chosen_mask, union)

    decoded, prompts, logged = _decode_counting(apply_threshold(maps, None), tiny_sam_on_grey, caplog)
    assert len(prompts) == len(logged) == 2  # without the option: one call per label
    bird = decoded.labels[0]
    assert bird.instances == () and bird.mask is not None
    positives = [tuple(p[:2]) for p in prompts[0] if p[2] == 1]
    assert any(x < 200 and y < 200 for x, y in positives) and any(x > 300 and y > 350 for x, y in positives)


def _prediction(shape, best: int):
    from surgery.method.results import MaskPrediction

    height, width = shape
    candidates = np.zeros((3, height, width), dtype=bool)
    candidates[0, : height // 4] = True
    candidates[1, : height // 2] = True
    candidates[2] = True
    return MaskPrediction(candidates=candidates, scores=np.array([0.5, 0.9, 0.7], np.float32), best=best)


def test_choosing_another_candidate_changes_the_shown_mask_only(explainer, rocket):
    maps = explainer.compute_maps(rocket, parse_labels("rocket, smoke").labels, MapOptions(224, "labels"))
    decoded = decode_masks(apply_threshold(maps, None), lambda points: _prediction(rocket.shape[:2], best=1))
    assert decoded.labels[0].chosen_mask.mean() == pytest.approx(0.5, abs=0.01)
    chosen = with_choices(decoded, {"rocket": 2})
    assert chosen.labels[0].chosen_mask.all() and chosen.labels[0].chosen_score == pytest.approx(0.7)
    assert chosen.labels[1].chosen == 1  # other labels keep the best


def test_coco_rle_round_trip():
    rng = np.random.default_rng(1)
    for shape in ((7, 5), (40, 33)):
        mask = rng.random(shape) > 0.6
        mask[0, 0] = True  # a run starting with ones
        rle = encode_rle(mask)
        assert rle["size"] == list(shape) and rle["counts"][0] == 0
        assert sum(rle["counts"]) == mask.size
        assert np.array_equal(decode_rle(rle), mask)
    assert mask_box(np.zeros((4, 4), bool)) is None
    box_mask = np.zeros((10, 12), bool)
    box_mask[2:5, 3:9] = True
    assert mask_box(box_mask) == [3, 2, 6, 3]


def test_coco_document_matches_the_masks(explainer, rocket):
    maps = explainer.compute_maps(rocket, parse_labels("rocket, smoke").labels, MapOptions(224, "labels"))
    decoded = decode_masks(apply_threshold(maps, None), lambda points: _prediction(rocket.shape[:2], best=1))
    document = json.loads(json.dumps(coco_document(decoded, "rocket.png")))
    assert [c["name"] for c in document["categories"]] == ["rocket", "smoke"]
    assert document["images"][0]["width"] == rocket.shape[1]
    for annotation in document["annotations"]:
        view = decoded.labels[annotation["category_id"] - 1]
        assert np.array_equal(decode_rle(annotation["segmentation"]), view.chosen_mask)
        assert annotation["area"] == int(view.chosen_mask.sum())
        assert annotation["score"] == pytest.approx(view.chosen_score, abs=1e-6)


def test_coco_masks_are_scaled_back_onto_the_original_file(explainer, rocket):
    """Masks made on a half-size working copy land on the full-size file the document names."""
    import cv2

    half = np.ascontiguousarray(cv2.resize(rocket, (rocket.shape[1] // 2, rocket.shape[0] // 2),
                                           interpolation=cv2.INTER_AREA))
    maps = explainer.compute_maps(half, parse_labels("rocket, smoke").labels, MapOptions(224, "labels"))
    decoded = decode_masks(apply_threshold(maps, None), lambda points: _prediction(half.shape[:2], best=1))
    document = coco_document(decoded, "rocket.png", image_size=rocket.shape[:2])
    assert (document["images"][0]["height"], document["images"][0]["width"]) == rocket.shape[:2]
    assert document["annotations"]
    for annotation in document["annotations"]:
        mask = decode_rle(annotation["segmentation"])
        assert mask.shape == rocket.shape[:2]
        small = decoded.labels[annotation["category_id"] - 1].chosen_mask
        assert abs(mask.mean() - small.mean()) < 0.02  # the same region, at twice the size
        back = cv2.resize(mask.astype(np.uint8), small.shape[::-1], interpolation=cv2.INTER_NEAREST)
        assert (back.astype(bool) == small).mean() > 0.97
        assert annotation["bbox"] == mask_box(mask)


def _session_counting_decodes(explainer, rocket):
    """A session on the tiny SAM (labels rocket, smoke), the list its decoder calls append to, and the SAM."""
    from conftest import DATA
    from surgery.sam.segmenter import SamSegmenter
    from surgery.sam.architecture import load_sam
    from explorer.session import SessionState

    segmenter = SamSegmenter(load_sam(DATA / "sam_tiny.safetensors"))
    decoder_calls = []
    real_predict = segmenter.predict
    segmenter.predict = lambda embedding, points: decoder_calls.append(1) or real_predict(embedding, points)
    maps = explainer.compute_maps(rocket, parse_labels("rocket, smoke").labels, MapOptions(224, "labels"))
    state = SessionState(rocket, maps, "tiny", "sam", ("vit_b", "fp32"), segmenter.embed(rocket), ())
    return state, decoder_calls, segmenter


def test_candidate_switch_and_threshold_rerender_make_no_model_call(explainer, rocket):
    from explorer.session import rerender

    state, decoder_calls, segmenter = _session_counting_decodes(explainer, rocket)
    maps = state.maps
    first = rerender(state, None, segmenter)
    assert len(decoder_calls) == 2 and segmenter.encode_calls == 1
    encodings = explainer.image_encodings
    state.mask_choices["rocket"] = (first.labels[0].chosen + 1) % 3
    switched = rerender(state, None, segmenter)
    assert len(decoder_calls) == 2 and segmenter.encode_calls == 1 and explainer.image_encodings == encodings
    assert switched.labels[0].chosen == state.mask_choices["rocket"]
    choice = state.mask_choices["rocket"]
    assert np.array_equal(switched.labels[0].chosen_mask, first.labels[0].mask.candidates[choice])
    assert switched.labels[0].chosen_score == pytest.approx(float(first.labels[0].mask.scores[choice]))
    top = max(float(lm.parts["surgery"].max()) for lm in maps.labels)
    hidden = rerender(state, top + 1.0, segmenter)
    assert not any(view.found for view in hidden.labels) and len(decoder_calls) == 2


def test_decoded_masks_per_session_stay_within_their_byte_budget(explainer, rocket):
    from explorer import session as S

    state, decodes, segmenter = _session_counting_decodes(explainer, rocket)
    maps = state.maps
    first = S.rerender(state, None, segmenter)
    packed = state.mask_cache.nbytes // 2  # two labels decoded
    assert packed * 8 >= first.labels[0].mask.candidates.size  # stored bit-packed
    state.mask_cache = S.MaskCache(max_bytes=3 * packed)
    base = S.apply_threshold(maps, None)
    assert all(view.found for view in base.labels)
    shifted = []
    for shift in range(8):  # eight point sets per label: far more decodes than three fit
        moved = replace(base, labels=tuple(replace(view, points=view.points + [shift, shift, 0])
                                           for view in base.labels))
        shifted.append((moved, S.masks_for(state, moved, segmenter)))
        assert state.mask_cache.nbytes <= 3 * packed and len(state.mask_cache) == min(3, 2 * (shift + 1))
    assert len(decodes) == 2 + 16
    # The latest decodes are kept (least recently used dropped first) and come back equal.
    last_moved, last = shifted[-1]
    again = S.masks_for(state, last_moved, segmenter)
    assert len(decodes) == 18
    for view, before in zip(again.labels, last.labels):
        assert np.array_equal(view.mask.candidates, before.mask.candidates)
        assert np.array_equal(view.mask.scores, before.mask.scores) and view.mask.best == before.mask.best
    S.masks_for(state, shifted[0][0], segmenter)  # long evicted: decoded again
    assert len(decodes) == 20


def test_a_rerender_before_the_embedding_is_in_says_masks_are_pending(explainer, rocket):
    from explorer import page
    from explorer import session as S

    state, decodes, segmenter = _session_counting_decodes(explainer, rocket)
    embedding, state.embedding = state.embedding, None  # as during a Run's SAM encoding
    assert S.masks_pending(state)
    pending = S.rerender(state, None, segmenter)
    assert decodes == [] and all(view.mask is None for view in pending.labels)
    assert "computing…" in page.summary_markdown(state, pending, S.masks_pending(state))
    state.embedding = embedding
    assert not S.masks_pending(state)
    assert all(view.mask is not None for view in S.rerender(state, None, segmenter).labels if view.found)
    state.sam_key = None  # SAM off: nothing is ever pending
    assert not S.masks_pending(state)
