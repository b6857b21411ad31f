"""Make combined_oracle.npz: the `a+b` parity case's surgery map, which reference.npz lacks.

The reference outputs (reference.json/.npz) hold the combined case's points but not its map.
This computes that map with tests/reference_impl.py, the independent port of the reference
arithmetic, following the reference demo for a combined target: encode the parts, surgery
with empty-prompt redundancy, min-max each part's raw map over the patches, average them.
It uses none of the product's code (no `surgery` import): the model is open_clip's CLIP built
from the OpenAI-layout state dict, the templates are the reference's own list.

Run from the repository root, once, when the parity fixture changes:

    .venv/bin/python tests/data/parity/make_combined_oracle.py PATH/TO/reference/prompt_templates.txt

(the reference CLIP Surgery code's 85-template list, as published with the method; it is read
only here, when the file is made). Before writing, it checks that the oracle reproduces the
reference's own map for case 0 and the reference's points for the combined case.

Output keys, float32, rows in the order of the case's parts:
- `case2_surgery` (1, g, g): the combined map, what the product stores as that label's `surgery_map`;
- `case2_parts` (2, g, g): each part's raw surgery map (empty-prompt redundancy).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from open_clip.model import build_model_from_openai_state_dict
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for reference_impl

import reference_impl as ref  # noqa: E402

COMBINED_CASE = 2


def load_model() -> torch.nn.Module:
    state = {key: value.float() for key, value in load_file(HERE / "weights.safetensors").items()}
    return build_model_from_openai_state_dict(state, cast_dtype=None).float().eval()


def text(model, tokenizer, templates, texts):
    return ref.text_features(model, tokenizer, texts, templates)


def main(templates_path: str) -> None:
    templates = [line for line in Path(templates_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(templates) == 85, len(templates)
    cases = json.loads((HERE / "reference.json").read_text())
    with np.load(HERE / "reference.npz") as fixture:
        reference = {key: fixture[key] for key in fixture.files}
    model, tokenizer = load_model(), SimpleTokenizer()

    # the oracle, with this model, reproduces the reference's own maps (case 0, surgery across labels)
    case0 = cases[0]
    pixels, _ = ref.preprocess(str(HERE / case0["image"]), case0["resolution"])
    surgery_feats, _ = ref.image_features(model, pixels)
    sim = ref.clip_feature_surgery(surgery_feats, text(model, tokenizer, templates, case0["labels"]))[0, 1:]
    g = case0["grid"]
    np.testing.assert_allclose(sim.T.reshape(-1, g, g).numpy(), reference["case0_surgery"], atol=1e-5, rtol=0)

    case = cases[COMBINED_CASE]
    assert case["mode"] == "combined" and len(case["labels"]) == 1, case
    (combined,) = case["labels"]
    parts = combined.split("+")
    pixels, shape = ref.preprocess(str(HERE / case["image"]), case["resolution"])
    surgery_feats, _ = ref.image_features(model, pixels)
    sim = ref.clip_feature_surgery(surgery_feats, text(model, tokenizer, templates, parts),
                                   text(model, tokenizer, templates, [""]))[0, 1:]  # (N, parts)
    normalised = (sim - sim.min(0, keepdim=True)[0]) / (sim.max(0, keepdim=True)[0] - sim.min(0, keepdim=True)[0])
    mean = normalised.mean(-1)

    # the reference demo's points for a combined target: negatives of the mean map, positives of each part
    points = [p for p in ref.labelled_points(mean, shape) if p[2] == 0]
    for k in range(len(parts)):
        points += [p for p in ref.labelled_points(sim[:, k], shape) if p[2] == 1]
    expected = sorted(map(tuple, case["points"][combined]))
    assert sorted(map(tuple, points)) == expected, "the oracle does not reproduce the reference's points"

    g = case["grid"]
    np.savez_compressed(
        HERE / "combined_oracle.npz",
        case2_surgery=mean.reshape(1, g, g).numpy().astype(np.float32),
        case2_parts=sim.T.reshape(-1, g, g).numpy().astype(np.float32),
    )
    print(f"wrote {HERE / 'combined_oracle.npz'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
