"""An independent oracle: the reference CLIP Surgery code's arithmetic, written plainly.

It follows the published implementation step by step (explicit q/k/v attention
with materialised softmax, the 4-D element-wise feature-surgery tensor, the
per-point loop of `similarity_map_to_points`) but on a fresh copy of the
positional embedding each call, avoiding the reference's in-place trap. It is
first checked against the reference's own outputs (tests/data/parity) at 224 px,
then used to check the product at resolutions and modes the fixture lacks.
It shares no code with `surgery/`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(path: str, resolution: int) -> tuple[torch.Tensor, tuple[int, int]]:
    image = Image.open(path).convert("RGB")
    resized = image.resize((resolution, resolution), Image.BICUBIC)
    x = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float() / 255.0
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x[None], (image.height, image.width)


def _attention(block, x, value_value: bool):
    attn = block.attn
    B, N, C = x.shape
    h = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).reshape(B, N, 3, h, C // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if value_value:
        q, k = v, v
    weights = ((q @ k.transpose(-2, -1)) * (C // h) ** -0.5).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(B, N, C)
    return attn.out_proj(out)


@torch.no_grad()
def image_features(model, pixels: torch.Tensor, depth: int = 6):
    visual = model.visual
    x = visual.conv1(pixels)
    side_new = x.shape[-1]
    x = x.reshape(1, x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.reshape(1, 1, -1), x], dim=1)
    pos = visual.positional_embedding.detach().clone()
    side = int((pos.shape[0] - 1) ** 0.5)
    if side != side_new:
        new_pos = pos[1:].reshape(-1, side, side, pos.shape[-1]).permute(0, 3, 1, 2)
        new_pos = F.interpolate(new_pos, (side_new, side_new), mode="bilinear")
        new_pos = new_pos.reshape(-1, pos.shape[-1], side_new * side_new).transpose(1, 2)
        pos = torch.cat([pos[:1], new_pos[0]], 0)
    x = visual.ln_pre(x + pos)
    blocks = visual.transformer.resblocks
    for block in blocks[: len(blocks) - depth]:
        x = x + _attention(block, block.ln_1(x), False)
        x = x + block.mlp(block.ln_2(x))
    x_new, x_ori = x.clone(), x.clone()
    for block in blocks[len(blocks) - depth:]:
        normed = block.ln_1(x_ori)
        x_new = x_new + _attention(block, normed, True)
        x_ori = x_ori + _attention(block, normed, False)
        x_ori = x_ori + block.mlp(block.ln_2(x_ori))
    x_new[:, 0] = x_ori[:, 0]
    surgery = visual.ln_post(x_new) @ visual.proj
    original = visual.ln_post(x_ori) @ visual.proj
    return surgery / surgery.norm(dim=-1, keepdim=True), original / original.norm(dim=-1, keepdim=True)


@torch.no_grad()
def text_features(model, tokenizer, texts, templates):
    rows = []
    for t in texts:
        tokens = tokenizer([template.format(t) for template in templates])
        emb = model.encode_text(tokens)  # full 77-token context, open_clip's own forward
        emb = emb / emb.norm(dim=-1, keepdim=True)
        emb = emb.mean(dim=0)
        rows.append(emb / emb.norm())
    return torch.stack(rows, dim=1).t()


def clip_feature_surgery(image_features, text_features, redundant_feats=None):
    if redundant_feats is not None:
        return image_features @ (text_features - redundant_feats).t()
    prob = image_features[:, :1, :] @ text_features.t()
    prob = (prob * 2).softmax(-1)
    w = prob / prob.mean(-1, keepdim=True)
    b, n_t, n_i, c = image_features.shape[0], text_features.shape[0], image_features.shape[1], image_features.shape[2]
    feats = image_features.reshape(b, n_i, 1, c) * text_features.reshape(1, 1, n_t, c)
    feats = feats * w.reshape(1, 1, n_t, 1)
    feats = feats - feats.mean(2, keepdim=True)
    return feats.sum(-1)


def similarity_map_to_points(sm, shape, t=0.8, down_sample=2):
    side = int(sm.shape[0] ** 0.5)
    sm = sm.reshape(1, 1, side, side)
    down_side = side // down_sample
    sm = F.interpolate(sm, (down_side, down_side), mode="bilinear")[0, 0, :, :]
    h, w = sm.shape
    sm = sm.reshape(-1)
    sm = (sm - sm.min()) / (sm.max() - sm.min())
    rank = sm.sort(0)[1]
    scale_h = float(shape[0]) / h
    scale_w = float(shape[1]) / w
    num = min((sm >= t).sum(), sm.shape[0] // 2)
    labels = np.ones(num * 2).astype("uint8")
    labels[num:] = 0
    points = []
    for idx in list(rank[-num:]) + list(rank[:num]):
        x = min((idx % w + 0.5) * scale_w, shape[1] - 1)
        y = min((idx // w + 0.5) * scale_h, shape[0] - 1)
        points.append([int(x), int(y)])
    return points, labels


def labelled_points(sm, shape):
    points, labels = similarity_map_to_points(sm, shape)
    return [[x, y, int(lab)] for (x, y), lab in zip(points, labels)]
