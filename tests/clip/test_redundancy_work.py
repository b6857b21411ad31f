"""compute_maps does the empty-prompt surgery only when something needs it, and only once."""

from __future__ import annotations

import numpy as np
import pytest

import surgery.clip.explainer as explainer_module
from surgery.method import feature_surgery
from surgery.method.labels import parse_labels
from surgery.method.options import MapOptions


@pytest.fixture()
def empty_prompt_products(monkeypatch):
    """Counts calls of the empty-prompt redundancy product; each call still runs the real function."""
    calls = []
    real = feature_surgery.surgery_with_redundant

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(explainer_module.feature_surgery, "surgery_with_redundant", counted)
    return calls


@pytest.mark.parametrize("labels, redundancy, expected", [
    ("rocket, smoke", "vocab", 0),  # no combined label: nothing needs the empty prompt
    ("rocket, smoke", "labels", 0),
    ("rocket, smoke+sky", "vocab", 1),  # the combined label's parts
    ("rocket, smoke", "empty", 1),
    ("rocket, smoke+sky", "empty", 1),  # both need it: computed once
])
def test_empty_prompt_surgery_runs_only_when_needed(explainer, rocket, empty_prompt_products, labels, redundancy,
                                                    expected):
    maps = explainer.compute_maps(rocket, parse_labels(labels).labels, MapOptions(224, redundancy))
    assert len(empty_prompt_products) == expected
    assert all(np.isfinite(lm.parts["surgery"]).all() for lm in maps.labels)
