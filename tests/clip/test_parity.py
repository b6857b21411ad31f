"""Parity with the reference CLIP Surgery outputs (tests/data/parity, made by the reference code)
and with an independent port of the reference arithmetic at other resolutions and modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

import reference_impl as ref
from conftest import DATA, PARITY, points_match
from surgery.method.options import MapOptions
from surgery.method.labels import parse_labels
from surgery.method.points import combined_points, points_for_sam
from surgery.method.prompts import background_vocabulary, prompt_templates

MAP_TOLERANCE = 1e-5
# The reference's 59 background classes, pinned in the test data (a copy of the reference's list).
VOCABULARY = tuple(line.strip() for line in (DATA / "background_vocabulary.txt").read_text(encoding="utf-8")
                   .splitlines() if line.strip())
# The `a+b` case's map, which the reference outputs lack: made by make_combined_oracle.py with the
# independent port (tests/reference_impl.py), checked there against the reference's points.
COMBINED_ORACLE = PARITY / "combined_oracle.npz"


@pytest.fixture(scope="module")
def expected_maps(parity_maps) -> dict[str, np.ndarray]:
    with np.load(COMBINED_ORACLE) as combined:
        extra = {key: combined[key] for key in combined.files}
    assert not set(extra) & set(parity_maps), "the oracle must not replace a reference output"
    return {**parity_maps, **extra}


def test_pinned_vocabulary_is_the_products():
    assert len(VOCABULARY) == 59 and len(set(VOCABULARY)) == 59
    assert tuple(background_vocabulary()) == VOCABULARY


def product_maps(explainer, rocket, labels: str, redundancy: str, resolution: int):
    parsed = parse_labels(labels)
    return explainer.compute_maps(rocket, parsed.labels, MapOptions(resolution=resolution, redundancy=redundancy))


@pytest.mark.parametrize("case_index", [0, 1, 2])
def test_fixture_parity(explainer, rocket, parity_cases, expected_maps, case_index):
    case = parity_cases[case_index]
    mode = {"labels": "labels", "empty": "empty", "combined": "empty"}[case["mode"]]
    result = product_maps(explainer, rocket, ", ".join(case["labels"]), mode, case["resolution"])
    assert result.labels[0].maps["surgery"].shape == (case["grid"], case["grid"])
    assert [result.width, result.height] == case["size"]
    surgery = np.stack([lm.maps["surgery"] for lm in result.labels])
    # every case has its surgery map; `labels` cases also their CLIP map: a missing one is a failure
    assert f"case{case_index}_surgery" in expected_maps, f"no surgery map for case {case_index} in the test data"
    np.testing.assert_allclose(surgery, expected_maps[f"case{case_index}_surgery"], atol=MAP_TOLERANCE, rtol=0)
    if case["mode"] == "labels":
        assert f"case{case_index}_clip" in expected_maps, f"no CLIP map for case {case_index} in the test data"
        clip = np.stack([lm.maps["clip"] for lm in result.labels])
        np.testing.assert_allclose(clip, expected_maps[f"case{case_index}_clip"], atol=MAP_TOLERANCE, rtol=0)
    if case["mode"] == "combined":
        (combined,) = result.labels
        np.testing.assert_allclose(combined.parts["surgery"], expected_maps[f"case{case_index}_parts"],
                                   atol=MAP_TOLERANCE, rtol=0)
    W, H = case["size"]
    for lm in result.labels:
        if lm.label.is_combined:
            points = combined_points(lm.parts["surgery"], W, H)
        else:
            points = points_for_sam(lm.parts["surgery"][0], W, H)
        assert points_match(points, case["points"][lm.label.text]), lm.label.text


@pytest.fixture(scope="module")
def oracle(explainer):
    return explainer.model, SimpleTokenizer()


_TEXT_CACHE: dict = {}


def cached_text(oracle, texts):
    model, tokenizer = oracle
    key = tuple(texts)
    if key not in _TEXT_CACHE:
        _TEXT_CACHE[key] = ref.text_features(model, tokenizer, texts, list(prompt_templates()))
    return _TEXT_CACHE[key]


def oracle_maps(oracle, resolution, texts, redundancy):
    model, tokenizer = oracle
    pixels, shape = ref.preprocess(str(PARITY / "rocket.png"), resolution)
    surgery_feats, original_feats = ref.image_features(model, pixels)
    if redundancy == "vocab":
        union = list(dict.fromkeys(texts + list(VOCABULARY)))
        sim = ref.clip_feature_surgery(surgery_feats, cached_text(oracle, union))[:, :, : len(texts)]
    elif redundancy == "labels":
        sim = ref.clip_feature_surgery(surgery_feats, cached_text(oracle, texts))
    else:
        sim = ref.clip_feature_surgery(surgery_feats, cached_text(oracle, texts), cached_text(oracle, [""]))
    clip = original_feats @ cached_text(oracle, texts).t()
    return sim[0, 1:], clip[0, 1:], shape


def test_oracle_reproduces_fixture(oracle, parity_cases, parity_maps):
    """The oracle itself matches the reference outputs, so it can vouch for other settings."""
    case = parity_cases[0]
    sim, clip, shape = oracle_maps(oracle, 224, case["labels"], "labels")
    g = case["grid"]
    np.testing.assert_allclose(sim.T.reshape(-1, g, g).numpy(), parity_maps["case0_surgery"], atol=MAP_TOLERANCE)
    np.testing.assert_allclose(clip.T.reshape(-1, g, g).numpy(), parity_maps["case0_clip"], atol=MAP_TOLERANCE)
    for k, label in enumerate(case["labels"]):
        assert points_match(ref.labelled_points(sim[:, k], shape), case["points"][label])


def test_stored_combined_oracle_gives_the_reference_points(parity_cases, expected_maps):
    """The stored `a+b` maps reproduce the reference's own points for that case (the reference demo:
    negatives of the mean map, positives of each part's map), so they can stand in for its map."""
    case = parity_cases[2]
    (label,) = case["labels"]
    W, H = case["size"]
    mean = torch.from_numpy(expected_maps["case2_surgery"][0].reshape(-1))
    parts = expected_maps["case2_parts"]
    assert parts.shape[0] == len(label.split("+"))
    points = [p for p in ref.labelled_points(mean, (H, W)) if p[2] == 0]
    for part in parts:
        points += [p for p in ref.labelled_points(torch.from_numpy(part.reshape(-1)), (H, W)) if p[2] == 1]
    assert points_match(points, case["points"][label])
    normalised = [(p - p.min()) / (p.max() - p.min()) for p in parts]
    np.testing.assert_allclose(expected_maps["case2_surgery"][0], np.mean(normalised, axis=0), atol=1e-6)


@pytest.mark.parametrize("resolution,redundancy", [
    (336, "labels"), (448, "labels"), (512, "labels"), (512, "vocab"), (224, "vocab"), (336, "empty"),
])
def test_matches_oracle_at_other_settings(explainer, rocket, oracle, resolution, redundancy):
    texts = ["rocket", "smoke", "sky"] if redundancy != "empty" else ["rocket"]
    sim, clip, shape = oracle_maps(oracle, resolution, texts, redundancy)
    result = product_maps(explainer, rocket, ", ".join(texts), redundancy, resolution)
    g = resolution // 16
    assert result.labels[0].maps["surgery"].shape == (g, g)
    np.testing.assert_allclose(np.stack([lm.maps["surgery"] for lm in result.labels]),
                               sim.T.reshape(-1, g, g).numpy(), atol=MAP_TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.stack([lm.maps["clip"] for lm in result.labels]),
                               clip.T.reshape(-1, g, g).numpy(), atol=MAP_TOLERANCE, rtol=0)
    for k, lm in enumerate(result.labels):
        expected = ref.labelled_points(sim[:, k], shape)
        assert points_match(points_for_sam(lm.parts["surgery"][0], result.width, result.height), expected)


def test_vocab_mode_differs_from_labels_mode(explainer, rocket):
    """Guards against the vocabulary silently not being used."""
    vocab = product_maps(explainer, rocket, "rocket, smoke", "vocab", 224)
    labels = product_maps(explainer, rocket, "rocket, smoke", "labels", 224)
    assert np.abs(vocab.labels[0].maps["surgery"] - labels.labels[0].maps["surgery"]).max() > 1e-3
