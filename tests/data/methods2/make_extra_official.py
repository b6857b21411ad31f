"""Write extra_official.json / extra_official.npz: ResCLIP and SC-CLIP maps computed by the official code.

The shared fixture's two ResCLIP cases give every patch the same first-pass label, so they do
not exercise SFR's label logic (path check, decay, mixed-label blur); its cases are all square
and never hit SC-CLIP's N = 441 quantile tie. These extra cases do, on the same checkpoint and
image (tests/data/parity). Not run by the tests; kept to say exactly how the data were made.

Usage (from the repository root, with torch, numpy, Pillow, safetensors, ftfy, regex):

    python tests/data/methods2/make_extra_official.py RESCLIP_DIR SCCLIP_DIR

RESCLIP_DIR: a checkout of yvhangyang/ResCLIP @ 0e085f7f52f06098b383599e9653cd28cc665a8c,
SCCLIP_DIR: of SuleBai/SC-CLIP @ 0417ba92851e9dd7432d608f10a0804d01a23062. Their files are
copied to a scratch folder and patched there exactly as the shared fixture's `params.patches`
say (ResCLIP: `.cuda()` -> `.cpu()` three times, RCS `range(5, 9)` -> `range(3, 6)` for the
8-block checkpoint); SC-CLIP needs no patch, its layer indices are attributes (pre 5, post 2,
multi 2..7), set as its segmentor sets them. Label features: each official segmentor's own
ensemble (official tokenizer, 80 `openai_imagenet_template`s, encode_text, normalise, mean,
normalise). Input: PIL bicubic resize to (W, H), /255, CLIP mean/std. Everything float32 on CPU.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

HERE = Path(__file__).parent
PARITY = HERE.parent / "parity"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

RESCLIP_PATCHES = [
    ("seg_logit_temp = seg_logit_temp.cuda()", "seg_logit_temp = seg_logit_temp.cpu()"),
    ("patch_logit_temp = patch_logit_temp.cuda()", "patch_logit_temp = patch_logit_temp.cpu()"),
    ("PAMR(10, dilations=(8, 16)).to(torch.device('cuda'))", "PAMR(10, dilations=(8, 16)).to(torch.device('cpu'))"),
    ("selected_attns = torch.stack([attn_map[i] for i in range(5, 9)])",
     "selected_attns = torch.stack([attn_map[i] for i in range(3, 6)])"),
]

# (method, height, width, labels): first-pass labels of these ResCLIP cases (measured): 224: {0, 6},
# 448: {3, 4, 7}, 224x320: {3, 5}.
CASES = [
    ("resclip", 224, 224, ["tree", "star", "snow", "night", "cow", "car", "train", "fire"]),
    ("resclip", 448, 448, ["cloud", "sky", "boat", "grass", "steel", "light", "water", "smoke"]),
    ("resclip", 224, 320, ["field", "tower", "tree", "bridge", "metal", "grass", "cat", "boat"]),
    ("scclip", 336, 336, ["rocket", "smoke", "sky"]),
]


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def official_modules(repo: Path, scratch: Path, tag: str, patches) -> tuple:
    """(model module, tokenize function, templates) of one official checkout, patched in `scratch`."""
    folder = scratch / tag
    folder.mkdir()
    source = (repo / "clip" / "model.py").read_text()
    for old, new in patches:
        assert source.count(old) == 1, f"patch target not found once in {repo}: {old}"
        source = source.replace(old, new)
    (folder / f"{tag}_model.py").write_text(source)
    if (repo / "pamr.py").exists():
        shutil.copy(repo / "pamr.py", folder / "pamr.py")
    sys.path.insert(0, str(folder))
    model = load_module(f"{tag}_model", folder / f"{tag}_model.py")
    tokenizer_module = load_module(f"{tag}_tokenizer", repo / "clip" / "simple_tokenizer.py")
    tokenizer = tokenizer_module.SimpleTokenizer(str(repo / "clip" / "bpe_simple_vocab_16e6.txt.gz"))
    templates = load_module(f"{tag}_templates", repo / "prompts" / "imagenet_template.py").openai_imagenet_template

    def tokenize(texts: list[str], context_length: int = 77) -> torch.Tensor:  # clip.tokenize, truncate=False
        sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
        rows = [[sot] + tokenizer.encode(text) + [eot] for text in texts]
        result = torch.zeros(len(rows), context_length, dtype=torch.long)
        for i, tokens in enumerate(rows):
            assert len(tokens) <= context_length
            result[i, :len(tokens)] = torch.tensor(tokens)
        return result

    return model, tokenize, templates


def label_features(net, tokenize, templates, labels: list[str]) -> torch.Tensor:
    """The official segmentors' ensemble (ResCLIPSegmentation / SCCLIPForSegmentation.__init__)."""
    rows = []
    with torch.no_grad():
        for label in labels:
            feature = net.encode_text(tokenize([template(label) for template in templates]))
            feature /= feature.norm(dim=-1, keepdim=True)
            feature = feature.mean(dim=0)
            feature /= feature.norm()
            rows.append(feature.unsqueeze(0))
    return torch.cat(rows, dim=0)


def clip_input(height: int, width: int) -> torch.Tensor:
    image = Image.open(PARITY / "rocket.png").convert("RGB").resize((width, height), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return ((pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)).unsqueeze(0)


def main(resclip_repo: Path, scclip_repo: Path) -> None:
    weights = load_file(PARITY / "weights.safetensors")
    with tempfile.TemporaryDirectory() as scratch:
        resclip, resclip_tokenize, resclip_templates = official_modules(resclip_repo, Path(scratch), "resclip",
                                                                         RESCLIP_PATCHES)
        scclip, scclip_tokenize, scclip_templates = official_modules(scclip_repo, Path(scratch), "scclip", [])
        res_net = resclip.build_model(dict(weights)).float().eval()
        res_net.visual.set_params("wo_resi", "resclip", 5.0)
        sc_net = scclip.build_model(dict(weights)).float().eval()
        visual = sc_net.visual
        visual.pre_adjust_idx, visual.post_adjust_idx, visual.multi_start_idx, visual.multi_end_idx = 5, 2, 2, 7
        visual.res_cls = 0.3
        entries, arrays = [], {}
        for index, (method, height, width, labels) in enumerate(CASES):
            img = clip_input(height, width)
            with torch.no_grad():
                if method == "resclip":
                    queries = label_features(res_net, resclip_tokenize, resclip_templates, labels)
                    features = res_net.encode_image(
                        img, return_all=True, use_rcs=True, use_sfr=True, temp_thd=0.10,
                        attn_sfr_weights=[2.1, 0.6], attn_rcs_weights=[2.0, 0.6], delete_same_entity=True,
                        query_features=queries, img=img, patch_size=16, logit_scale=40, dtype=queries.dtype,
                        align_corners=False)[:, 1:]
                else:
                    queries = label_features(sc_net, scclip_tokenize, scclip_templates, labels)
                    features = sc_net.encode_image(img, return_all=True)
                features /= features.norm(dim=-1, keepdim=True)
                logits = features @ queries.T  # what forward_feature hands to its interpolate
            rows, cols = height // 16, width // 16
            arrays[f"case{index}_{method}"] = logits[0].T.reshape(-1, rows, cols).numpy().astype(np.float32)
            entries.append({"method": method, "image": "rocket.png", "size": [height, width], "labels": labels,
                            "grid": [rows, cols]})
    (HERE / "extra_official.json").write_text(json.dumps(entries, indent=1) + "\n")
    np.savez_compressed(HERE / "extra_official.npz", **arrays)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
