"""SC-CLIP, ResCLIP and ProxyCLIP: training-free CLIP dense methods that guide the last block.

MaskCLIP, ClearCLIP, SCLIP and NACLIP (`last_blocks`) rebuild CLIP's last block
from that block's own queries and keys. The three methods here steer its
attention with something from outside it, which is why they live apart:

- SC-CLIP: similarities of intermediate layers' patch tokens, after repairing
  outlier tokens (local outlier factor), plus a fusion of intermediate layers;
- ResCLIP: the trunk's own attention maps (RCS) and the labels of a first
  prediction pass (SFR);
- ProxyCLIP: the patch similarities of a second vision model, here SAM's
  image encoder.

The specification, with every constant and quirk of the official code, is the
project's METHODS2.md; the official sources are SuleBai/SC-CLIP @ 0417ba9,
yvhangyang/ResCLIP @ 0e085f7 and mc-lan/ProxyCLIP @ e7b767f.

Contracts (all pure: tensors in, tensors out, float32 arithmetic except ResCLIP's
two documented float16 roundings, under `torch.inference_mode`; the models'
weights and modules are read and never modified):

- the trunk is `surgery.clip.trunk.record_trunk`, asked for the block outputs SC-CLIP reads
  (`scclip_hidden_blocks`) and the attention ResCLIP averages (`resclip_attention_blocks`).
- `scclip_tokens(visual, record)`, `resclip_tokens(visual, record, pixels, label_features)`:
  (B, gh*gw, D) L2-normalised patch features, patches row-major.
- `proxy_embedding(image_encoder, pixels)`: (B, 256, 64, 64), ProxyCLIP's own SAM
  encoder pass on the CLIP input; `proxyclip_tokens(visual, record, proxy)`:
  (B, 64*64, D) on the proxy's grid.

A method's raw map is `tokens @ label_features.T`, (B, patches, K): the cosine with
the label features (the 80 ImageNet templates' ensemble, L2-normalised), which the
official segmentors hand to their patch-to-pixel upsampling. Sliding windows,
logit scale, softmax, thresholds and the demos' final PAMR are not part of it.

The official code runs one image at a time; a batch here is B such runs (the
per-image statistics, outlier sets, first-pass labels and proxy attention are each
image's own). Grids may be rectangular (gh != gw); the official code indexes a few
of its tensors as if the grid were square (SC-CLIP's outlier coordinates,
ProxyCLIP's value reshape), and the row-major layout is used here instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from .preprocess import CLIP_MEAN, CLIP_STD
from .trunk import TrunkRecord

__all__ = [
    "pamr",
    "proxy_embedding",
    "proxy_input",
    "proxyclip_tokens",
    "resclip_attention_blocks",
    "resclip_tokens",
    "scaled_layer_index",
    "scclip_hidden_blocks",
    "scclip_layers",
    "scclip_tokens",
]

# Layer indices of the official code are written for 12-block ViTs (METHODS2.md, "Layer indices and depth").
REFERENCE_DEPTH = 12

# --- SC-CLIP: Bai et al., "Self-Calibrated CLIP for Training-Free Open-Vocabulary Segmentation",
# arXiv 2411.15869 (clip/model.py and configs/base_config.py of SuleBai/SC-CLIP).
SCCLIP_BETA = 0.4  # similarities below this are cut from the aggregation matrices
SCCLIP_MID_ATTENTION_SCALE = 3.0  # temperature of the intermediate-similarity attention
SCCLIP_RES_CLS = 0.3  # weight of the class token added back to every patch
SCCLIP_LOF_NEIGHBOURS = 30  # k of the local outlier factor
SCCLIP_LOF_CONTAMINATION = 0.05  # share of patches taken as outliers
SCCLIP_PRE_ADJUST_INDEX = 8  # into [h_1 .. h_{L-1}]: guides the last block (repaired)
SCCLIP_POST_ADJUST_INDEX = 3  # into [h_1 .. h_{L-1}]: aggregates the outputs (not repaired)
SCCLIP_MULTI_LEVEL = (3, 10)  # [start, end) into [h_1 .. h_{L-1}]: the fused intermediate layers
SCCLIP_AGGREGATE_EPS = 1e-6

# --- ResCLIP: Yang et al., "ResCLIP: Residual Attention for Training-free Dense Vision-language
# Inference", CVPR 2025, arXiv 2411.15851 (clip/model.py, pamr.py; demo.py = configs/cfg_voc20.py).
RESCLIP_SIGMA = 5.0  # NACLIP's neighbourhood Gaussian and the SFR row blur, in patches
RESCLIP_RCS_WEIGHTS = (2.0, 0.6)  # (tau_r, lambda_r): residual cross-correlation attention
RESCLIP_SFR_WEIGHTS = (2.1, 0.6)  # (tau_s, lambda_s): semantic feedback refinement
RESCLIP_LABEL_THRESHOLD = 0.10  # temp_thd: first-pass pixels less confident than this get label 0
RESCLIP_FIRST_PASS_LOGIT_SCALE = 40
RESCLIP_RCS_BLOCKS = (5, 9)  # [start, end) trunk blocks (0-based) whose attention is averaged
RESCLIP_SFR_EPS = 1e-8
# PAMR: Araslanov & Roth, "Single-Stage Semantic Segmentation from Image Labels", CVPR 2020;
# ResCLIP's first pass runs it with these settings.
PAMR_ITERATIONS = 10
PAMR_DILATIONS = (8, 16)
PAMR_EPS = 1e-8
PAMR_STD_WEIGHT = 0.1

# --- ProxyCLIP: Lan et al., "ProxyCLIP: Proxy Attention Improves CLIP for Open-Vocabulary
# Segmentation", ECCV 2024, arXiv 2408.04883 (proxyclip_segmentor.py, open_clip/transformer.py).
PROXYCLIP_BETA = 1.2  # proxy similarities below beta x their mean are cut
PROXYCLIP_GAMMA = 3.0  # temperature of the proxy attention
PROXY_INPUT_SIZE = 1024  # the official code resizes to 1024, which is every released SAM's img_size
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # SAM's input normalisation, as ProxyCLIP applies it
IMAGENET_STD = (0.229, 0.224, 0.225)

# Rows per chunk so the (rows, N, C) difference tensor of the LOF stays near 32 M floats.
_LOF_CHUNK_ELEMENTS = 1 << 25
# Elements per chunk of ResCLIP's path check ((pairs, steps) point lookups).
_PATH_CHUNK_ELEMENTS = 1 << 24


def scaled_layer_index(index: int, blocks: int) -> int:
    """An official layer index for a tower of `blocks` blocks: unchanged when blocks >= 12,
    else floor(index * blocks / 12 + 1/2) (METHODS2.md)."""
    if index < 0 or blocks < 1:
        raise ValueError(f"need index >= 0 and blocks >= 1, got index {index}, blocks {blocks}")
    if blocks >= REFERENCE_DEPTH:
        return index
    return (2 * index * blocks + REFERENCE_DEPTH) // (2 * REFERENCE_DEPTH)  # exact integer floor


def scclip_layers(blocks: int) -> tuple[int, int, tuple[int, int]]:
    """(pre, post, (start, end)): SC-CLIP's indices into [h_1 .. h_{L-1}] for L = `blocks`."""
    pre = scaled_layer_index(SCCLIP_PRE_ADJUST_INDEX, blocks)
    post = scaled_layer_index(SCCLIP_POST_ADJUST_INDEX, blocks)
    start, end = (scaled_layer_index(i, blocks) for i in SCCLIP_MULTI_LEVEL)
    if max(pre, post, end - 1) > blocks - 2 or start >= end:
        raise InputError(f"SC-CLIP needs a vision tower deeper than {blocks} blocks; choose another CLIP.")
    return pre, post, (start, end)


def scclip_hidden_blocks(blocks: int) -> tuple[int, ...]:
    """The trunk blocks (0-based) whose outputs SC-CLIP reads, for L = `blocks`; pass them to
    `record_trunk(..., hidden_blocks=...)`."""
    pre, post, (start, end) = scclip_layers(blocks)
    return tuple(sorted({pre, post, *range(start, end), blocks - 2}))


def resclip_attention_blocks(blocks: int) -> tuple[int, ...]:
    """The trunk blocks (0-based) whose attention ResCLIP averages, for L = `blocks`;
    pass them to `record_trunk(..., attention_blocks=...)`."""
    start, end = (scaled_layer_index(i, blocks) for i in RESCLIP_RCS_BLOCKS)
    if end - 1 > blocks - 2 or start >= end:
        raise InputError(f"ResCLIP needs a vision tower deeper than {blocks} blocks; choose another CLIP.")
    return tuple(range(start, end))


# --- trunk ----------------------------------------------------------------------------------


def _check_pixels(pixels: torch.Tensor, patch: int) -> None:
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise InputError(f"Expected CLIP input of shape (B, 3, H, W), got {tuple(pixels.shape)}.")
    if pixels.shape[-2] % patch or pixels.shape[-1] % patch or min(pixels.shape[-2:]) < patch:
        raise InputError(f"The CLIP input's sides {tuple(pixels.shape[-2:])} must be multiples of the patch size "
                         f"{patch}.")


def _split_heads(block, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B*heads, T, d) of ln_1(h) through the block's in-projection, batch-major as the
    official code's (T, B*heads, d) views transposed."""
    attn = block.attn
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(h), attn.in_proj_weight, attn.in_proj_bias)
    batch, tokens, _ = qkv.shape

    def per_head(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, tokens, heads, -1).transpose(1, 2).reshape(batch * heads, tokens, -1)

    q, k, v = qkv.chunk(3, dim=-1)
    return per_head(q), per_head(k), per_head(v)


def _merge_heads(block, out: torch.Tensor, batch: int) -> torch.Tensor:
    """out_proj of per-head outputs (B*heads, T, d) -> (B, T, C)."""
    heads_total, tokens, head_dim = out.shape
    heads = heads_total // batch
    merged = out.reshape(batch, heads, tokens, head_dim).transpose(1, 2).reshape(batch, tokens, heads * head_dim)
    return block.attn.out_proj(merged)


def _finish(visual, tokens: torch.Tensor) -> torch.Tensor:
    """ln_post, @ proj, each row divided by its norm (as the official segmentors do)."""
    features = visual.ln_post(tokens) @ visual.proj
    return features / features.norm(dim=-1, keepdim=True)


# --- SC-CLIP ----------------------------------------------------------------------------------


def _lof_outliers(patches: torch.Tensor) -> torch.Tensor:
    """Indices of the local-outlier-factor outliers among the rows of `patches` (N, C), computed as
    the official `lof_pytorch`: squared L2 distances, k nearest neighbours by `topk`, reach distances
    (which all equal the row's k-distance), LOF above the 95 % quantile (strictly)."""
    count, width = patches.shape
    rows = max(1, _LOF_CHUNK_ELEMENTS // (count * width))
    distances = torch.cat([
        torch.norm(patches[start:start + rows, None] - patches[None, :], dim=2, p=2) ** 2
        for start in range(0, count, rows)
    ])
    knn_distances, knn_indices = torch.topk(distances, k=SCCLIP_LOF_NEIGHBOURS + 1, largest=False)
    knn_distances, knn_indices = knn_distances[:, 1:], knn_indices[:, 1:]  # drop each row itself
    k_distances = knn_distances[:, -1].unsqueeze(1).expand_as(knn_distances)
    reach_distances = torch.max(knn_distances, k_distances)
    density = SCCLIP_LOF_NEIGHBOURS / torch.nan_to_num(reach_distances.mean(dim=1), nan=1e-6)
    factor = (density[knn_indices] / density.unsqueeze(1)).mean(dim=1)
    threshold = _quantile(factor.to(torch.float32), 1 - SCCLIP_LOF_CONTAMINATION)
    return torch.where(factor > threshold)[0]


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """`torch.quantile(values, q)` (linear interpolation) with the rank q (n - 1) computed in float32, as
    the torch releases SC-CLIP was written with did: with q = 0.95 and n = 441 the rank is exactly 418,
    so the threshold is that sample, which is then not an outlier (METHODS2.md). Newer releases compute
    the rank in float64 (417.99999...), which moves the threshold just below it."""
    ordered = torch.sort(values).values
    rank = torch.tensor(q, dtype=torch.float32) * torch.tensor(ordered.numel() - 1, dtype=torch.float32)
    below, above = int(torch.floor(rank)), int(torch.ceil(rank))
    weight = rank - below
    start, end = ordered[below], ordered[above]
    # ATen's lerp: from the nearer end, so that a weight of 0 or 1 gives that sample exactly
    return start + weight * (end - start) if weight < 0.5 else end - (end - start) * (1 - weight)


def _repair(patches: torch.Tensor, outliers: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(1, N, C): each outlier patch replaced by the mean of its non-outlier 8-neighbours inside the
    grid (kept when it has none), all reading the unrepaired input; the official `mean_interpolation`."""
    if outliers.numel() == 0:
        return patches
    width = patches.shape[-1]
    grid_map = patches.reshape(rows * cols, width).transpose(0, 1).reshape(1, width, rows, cols)
    kernel = torch.ones(width, 1, 3, 3, device=patches.device, dtype=patches.dtype)
    kernel[:, 0, 1, 1] = 0
    outlier_rows, outlier_cols = torch.div(outliers, cols, rounding_mode="trunc"), outliers % cols
    valid = torch.ones((rows, cols), device=patches.device, dtype=patches.dtype)
    valid[outlier_rows, outlier_cols] = 0
    valid = valid[None, None]
    neighbour_sum = F.conv2d(F.pad(grid_map * valid, (1, 1, 1, 1)), kernel, groups=width)
    neighbour_count = F.conv2d(F.pad(valid, (1, 1, 1, 1)), kernel[:1])
    has_neighbours = (neighbour_count > 0).to(patches.dtype)
    neighbour_mean = neighbour_sum / torch.where(neighbour_count == 0, torch.ones_like(neighbour_count),
                                                 neighbour_count)
    is_outlier = torch.zeros((rows, cols), device=patches.device, dtype=patches.dtype)
    is_outlier[outlier_rows, outlier_cols] = 1
    update = is_outlier[None, None] * has_neighbours
    repaired = grid_map * (1 - update) + neighbour_mean * update
    return repaired.reshape(1, width, rows * cols).transpose(1, 2)


def _cosine_cut(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, S with entries < beta set to 0) for S the cosine similarities of the rows of (1, N, C)."""
    unit = patches / patches.norm(dim=2, keepdim=True)
    similarity = torch.matmul(unit, unit.transpose(1, 2))
    return similarity, similarity.masked_fill(similarity < SCCLIP_BETA, 0.0)


def _aggregate(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(weights / (row sums + 1e-6)) @ tokens; the official `adaptively_aggregate`."""
    return torch.matmul(weights / (weights.sum(dim=-1, keepdim=True) + SCCLIP_AGGREGATE_EPS), tokens)


def _scclip_last_block(block, patches: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """(1, N, C): out_proj(((softmax(M) + softmax(k k^T / sqrt(d))) / 2) v) on patch tokens only,
    M = 3 (S - mean S) with negative entries -inf; no residual, no MLP."""
    _, k, v = _split_heads(block, patches)
    heads = k.shape[0] // patches.shape[0]
    guide = (similarity - torch.mean(similarity)) * SCCLIP_MID_ATTENTION_SCALE
    guide = guide.masked_fill(guide < 0.0, float("-inf"))
    weights = F.softmax(guide.repeat(heads, 1, 1), dim=-1)
    weights = weights + F.softmax(torch.bmm(k, k.transpose(1, 2)) * k.shape[-1] ** -0.5, dim=-1)
    weights = weights / 2
    return _merge_heads(block, torch.bmm(weights, v), patches.shape[0])


@torch.inference_mode()
def scclip_tokens(visual, record: TrunkRecord) -> torch.Tensor:
    """(B, gh*gw, D) SC-CLIP's finished features (ln_post, proj, L2-normalised), patches row-major.

    Needs at least 31 patches (the LOF's 30 neighbours plus the patch itself).
    """
    rows, cols = record.grid
    if rows * cols <= SCCLIP_LOF_NEIGHBOURS:
        raise InputError(f"SC-CLIP needs more than {SCCLIP_LOF_NEIGHBOURS} patches; "
                         f"a {rows}x{cols} grid has {rows * cols}. Use a larger resolution.")
    pre, post, (start, end) = scclip_layers(record.blocks)
    missing = [i for i in scclip_hidden_blocks(record.blocks) if i not in record.hidden]
    if missing:
        raise ValueError(f"record_trunk was not asked for the outputs of blocks {missing}")
    block = visual.transformer.resblocks[-1]
    outputs = []
    for b in range(record.last.shape[0]):
        hidden = {i: h[b:b + 1] for i, h in record.hidden.items()}  # the official code's batch of one
        last = record.last[b:b + 1]
        outliers = _lof_outliers(last[0, 1:])
        x = _repair(last[:, 1:], outliers, rows, cols)
        guide, pre_weights = _cosine_cut(_repair(hidden[pre][:, 1:], outliers, rows, cols))
        x = _aggregate(x, pre_weights)
        x = _scclip_last_block(block, x, guide) + SCCLIP_RES_CLS * last[:, :1]
        _, post_weights = _cosine_cut(hidden[post][:, 1:])
        x = _aggregate(x, post_weights)
        fused = torch.zeros_like(last)
        for index in range(start, end):
            fused += hidden[index]
        fused = _scclip_last_block(block, fused[:, 1:], guide) + SCCLIP_RES_CLS * fused[:, :1]
        outputs.append(x + _aggregate(fused, post_weights))
    return _finish(visual, torch.cat(outputs))


# --- ResCLIP ----------------------------------------------------------------------------------


def _resclip_neighbourhood_bias(rows: int, cols: int, sigma: float, device: torch.device) -> torch.Tensor:
    """(1, T, T) Omega: exp(-((r1-r2)^2 + (c1-c2)^2) / (2 sigma^2)) between patches, 0 for the class
    token; the float32 values of the official `gaussian_window` (linspace in units of sigma sqrt 2)."""
    unit = 1 / (sigma * 2 ** 0.5)
    axes = []
    for side in (rows, cols):
        size = 2 * side - 1
        first = -(size - 1) / 2.0
        axes.append(torch.linspace(first * unit, (first + size - 1) * unit, steps=size, dtype=torch.float))
    window = torch.exp(-(torch.stack(torch.meshgrid(*axes, indexing="ij")) ** 2).sum(0))
    r = torch.arange(rows).repeat_interleave(cols)
    c = torch.arange(cols).repeat(rows)
    patches = window[(rows - 1) + r[:, None] - r[None, :], (cols - 1) + c[:, None] - c[None, :]]
    omega = torch.zeros(rows * cols + 1, rows * cols + 1)
    omega[1:, 1:] = patches
    return omega.unsqueeze(0).to(device)


def _resclip_features(visual, block, h: torch.Tensor, omega: torch.Tensor, rcs: torch.Tensor,
                      sfr: torch.Tensor | None) -> torch.Tensor:
    """(1, N, D) normalised patch features of ResCLIP's last block on h (1, T, C), with the SFR
    matrix (1, T, T) or without it (the first pass). rcs: (heads, T, T)."""
    _, k, v = _split_heads(block, h)
    weights = torch.bmm(k, k.transpose(1, 2)) * k.shape[-1] ** -0.5
    if sfr is not None:
        tau, lam = RESCLIP_SFR_WEIGHTS
        sfr_hat = (sfr / torch.max(sfr)).to(torch.float16)
        weights = tau * ((1 - lam) * weights + lam * sfr_hat)  # lam * sfr_hat is a float16 product
    weights = F.softmax(weights + omega, dim=-1)
    tau, lam = RESCLIP_RCS_WEIGHTS
    weights = tau * ((1 - lam) * weights + lam * rcs)
    return _finish(visual, _merge_heads(block, torch.bmm(weights, v), h.shape[0]))[:, 1:]


def _neighbours(x: torch.Tensor, dilations: Sequence[int], centre: bool) -> torch.Tensor:
    """(B, C, P, H, W): x (B, C, H, W) at the 3x3 offsets {-d, 0, d}^2 of each dilation d with
    replicate padding, in PAMR's kernel order (row-major; the centre only when `centre`)."""
    batch, channels, height, width = x.shape
    flat = x.reshape(batch * channels, 1, height, width)
    per_dilation = 9 if centre else 8
    out = torch.empty(batch * channels, per_dilation * len(dilations), height, width, dtype=x.dtype, device=x.device)
    for index, d in enumerate(dilations):
        padded = F.pad(flat, [d] * 4, mode="replicate")[:, 0]
        # windows at row and column offsets 0, d, 2d of the padded map: (BC, 3, 3, H, W), no copy
        windows = padded.unfold(1, height, d).unfold(2, width, d)
        first = index * per_dilation
        if centre:
            out[:, first:first + 9].view(-1, 3, 3, height, width).copy_(windows)
        else:
            out[:, first:first + 3].copy_(windows[:, 0])
            out[:, first + 3].copy_(windows[:, 1, 0])
            out[:, first + 4].copy_(windows[:, 1, 2])
            out[:, first + 5:first + 8].copy_(windows[:, 2])
    return out.view(batch, channels, -1, height, width)


def pamr(image: torch.Tensor, scores: torch.Tensor, iterations: int = PAMR_ITERATIONS,
         dilations: Sequence[int] = PAMR_DILATIONS, channels_per_pass: int = 8) -> torch.Tensor:
    """Pixel-adaptive mask refinement (the official `pamr.PAMR`, bit for bit on the CPU): scores
    (B, K, H, W) replaced `iterations` times by their affinity-weighted mean over the 8 neighbours
    at each dilation (replicate padding, centre excluded); affinities from the guide image
    (B, 3, H, W): softmax over neighbours of -|I - I_n| / (1e-8 + 0.1 std), std over the 3x3
    neighbourhoods of all dilations (centre included, unbiased), averaged over colour channels.
    ResCLIP's first pass uses it; so do the demos' final PAMR and NACLIP's evaluation harness. Score
    channels are independent: they are refined `channels_per_pass` at a time, which bounds the memory
    of a full-size image with many classes and leaves every value as it is."""
    deviation = _neighbours(image, dilations, centre=True).std(2, keepdim=True)
    centre = image.unsqueeze(2)
    difference = torch.abs(centre - _neighbours(image, dilations, centre=False))
    affinity = (-difference / (PAMR_EPS + PAMR_STD_WEIGHT * deviation)).mean(1, keepdim=True)
    affinity = F.softmax(affinity, 2)
    refined = []
    for first in range(0, scores.shape[1], channels_per_pass):
        chunk = scores[:, first:first + channels_per_pass]
        for _ in range(iterations):
            # the official (neighbours * affinity).sum(2), products in place; a running sum would be
            # cheaper but rounds differently from torch's reduction for some shapes
            chunk = _neighbours(chunk, dilations, centre=False).mul_(affinity).sum(2)
        refined.append(chunk)
    return torch.cat(refined, dim=1)


def _first_pass_labels(features: torch.Tensor, label_features: torch.Tensor, pixels: torch.Tensor,
                       rows: int, cols: int, patch: int) -> torch.Tensor:
    """(rows, cols) long: each patch's most frequent first-pass pixel label (ties: smallest label)."""
    count = label_features.shape[0]
    logits = (features @ label_features.T).permute(0, 2, 1).reshape(1, count, rows, cols)
    logits = F.interpolate(logits, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
    probabilities = torch.softmax(pamr(pixels, logits)[0] * RESCLIP_FIRST_PASS_LOGIT_SCALE, dim=0)
    labels = probabilities.argmax(0)  # first index on ties
    labels[probabilities.max(0)[0] < RESCLIP_LABEL_THRESHOLD] = 0
    blocks = labels.unfold(0, patch, patch).unfold(1, patch, patch).reshape(rows * cols, -1)
    votes = torch.zeros(rows * cols, count, dtype=torch.long, device=labels.device)
    votes.scatter_add_(1, blocks, torch.ones_like(blocks))
    # the first (smallest) label among the most frequent: CPU torch.mode's rule, on any device
    return votes.argmax(dim=-1).view(rows, cols)


def _path_valid(start: torch.Tensor, end: torch.Tensor, labels: torch.Tensor, max_steps: int) -> torch.Tensor:
    """(pairs,) bool: the official `check_path`. Points p_s = round(start (1 - t_s) + end t_s) for
    s = 0 .. steps(pair), t = linspace(0, 1, max_steps + 1) (global steps: only the first
    steps/max_steps of the segment is visited); valid when every point has the start's label.

    Each coordinate of p_s depends only on that coordinate of start and end, so it is read from a
    (side, side, max_steps + 1) table computed with the official float32 expression, element for
    element the same arithmetic as on the (pairs, steps, 2) tensor."""
    device = start.device
    t = torch.linspace(0, 1, steps=max_steps + 1, device=device)
    side = max(int(labels.shape[0]), int(labels.shape[1]))
    coordinate = torch.arange(side, device=device)
    table = (coordinate[:, None, None] * (1 - t) + coordinate[None, :, None] * t).round().long()
    step_index = torch.arange(max_steps + 1, device=device)
    chunk = max(1, _PATH_CHUNK_ELEMENTS // (max_steps + 1))
    valid = []
    for first in range(0, start.shape[0], chunk):
        s, e = start[first:first + chunk], end[first:first + chunk]
        steps = torch.max(torch.abs(e - s), dim=1)[0]
        point_values = labels[table[s[:, 0], e[:, 0]], table[s[:, 1], e[:, 1]]]
        start_values = labels[s[:, 0], s[:, 1]].unsqueeze(1)
        valid.append(((point_values == start_values) | (step_index > steps.unsqueeze(1))).all(dim=1))
    return torch.cat(valid)


def _sfr_matrix(labels: torch.Tensor, sigma: float) -> torch.Tensor:
    """(1, T, T) the official `generate_attention_sfr` with delete_same_entity: same-label indicator,
    decayed by exp(-steps / max steps) where the path check fails, each row blurred by a 1-D Gaussian
    over the raster index, clamped at 0, rows normalised; class row and column 0."""
    rows, cols = labels.shape
    count = rows * cols
    device = labels.device
    sfr = torch.zeros((count + 1, count + 1), device=device)
    index = torch.arange(count, device=device)
    i, j = torch.meshgrid(index, index, indexing="ij")
    i_row, i_col = torch.div(i, cols, rounding_mode="floor"), i % cols
    j_row, j_col = torch.div(j, cols, rounding_mode="floor"), j % cols
    sfr[1:, 1:] = (labels[i_row, i_col] == labels[j_row, j_col]).float()
    sfr.diagonal().fill_(1)
    sfr[0, :] = 0
    sfr[:, 0] = 0
    same = sfr[1:, 1:]
    start = torch.stack((i_row, i_col), dim=-1).view(-1, 2)
    end = torch.stack((j_row, j_col), dim=-1).view(-1, 2)
    steps = torch.max(torch.abs(end - start), dim=1)[0]
    max_steps = int(steps.max().item())
    valid = _path_valid(start, end, labels, max_steps).view(count, count)
    decay = torch.exp(-steps.view(count, count) / max_steps)
    same = torch.where(valid, same, same * decay)
    size = min(count, int(6 * sigma + 1))
    size = size if size % 2 == 1 else size + 1
    offsets = torch.arange(size, device=device) - size // 2
    kernel = torch.exp(-(offsets ** 2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    blurred = F.relu(F.conv1d(same.unsqueeze(1), kernel.view(1, 1, -1), padding=size // 2).squeeze(1))
    sfr[1:, 1:] = blurred / (blurred.sum(dim=1, keepdim=True) + RESCLIP_SFR_EPS)
    return sfr.unsqueeze(0)


@torch.inference_mode()
def resclip_tokens(visual, record: TrunkRecord, pixels: torch.Tensor, label_features: torch.Tensor) -> torch.Tensor:
    """(B, gh*gw, D) ResCLIP's features after the SFR-refined pass (ln_post, proj, L2-normalised).

    `record` must hold the attention of `resclip_attention_blocks(L)`; `pixels` is the CLIP input
    the record was computed from (PAMR's guide); `label_features` (K, D) the L2-normalised label
    ensemble in label order. The map depends on the whole label list and its order: the first
    pass labels each patch among all of them, and unconfident pixels go to label 0.
    """
    rows, cols = record.grid
    patch = visual.conv1.kernel_size[0]
    _check_pixels(pixels, patch)
    if tuple(pixels.shape[-2:]) != (rows * patch, cols * patch) or pixels.shape[0] != record.last.shape[0]:
        raise ValueError(f"pixels {tuple(pixels.shape)} are not the input of a {rows}x{cols} record")
    if label_features.ndim != 2 or label_features.shape[0] == 0:
        raise InputError("ResCLIP needs at least one label.")
    blocks = resclip_attention_blocks(record.blocks)
    missing = [i for i in blocks if i not in record.attention]
    if missing:
        raise ValueError(f"record_trunk was not asked for the attention of blocks {missing}")
    block = visual.transformer.resblocks[-1]
    h = record.last
    omega = _resclip_neighbourhood_bias(rows, cols, RESCLIP_SIGMA, h.device).to(h.dtype)
    rcs = torch.stack([record.attention[i] for i in blocks]).mean(dim=0)  # (B, heads, T, T)
    label_features = label_features.float()
    outputs = []
    for b in range(h.shape[0]):
        first = _resclip_features(visual, block, h[b:b + 1], omega, rcs[b], sfr=None)
        labels = _first_pass_labels(first, label_features, pixels[b:b + 1].float(), rows, cols, patch)
        sfr = _sfr_matrix(labels, RESCLIP_SIGMA)
        outputs.append(_resclip_features(visual, block, h[b:b + 1], omega, rcs[b], sfr=sfr))
    return torch.cat(outputs)


# --- ProxyCLIP --------------------------------------------------------------------------------


@torch.inference_mode()
def proxy_input(pixels: torch.Tensor, size: int = PROXY_INPUT_SIZE, mean: Sequence[float] = CLIP_MEAN,
                std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """(B, 3, size, size): what ProxyCLIP hands SAM's image encoder, the CLIP input un-normalised with
    (mean, std), normalised with ImageNet's mean and std, resized bilinearly (align_corners=False) to
    the encoder's input size. Not what SAM's predictor encodes (longest-side resize of the original
    image plus padding)."""
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise InputError(f"Expected CLIP input of shape (B, 3, H, W), got {tuple(pixels.shape)}.")
    x = pixels.float().clone()
    for channel, (m, s) in enumerate(zip(mean, std)):
        x[:, channel].mul_(s).add_(m)
    imagenet_mean = torch.as_tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    imagenet_std = torch.as_tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    x = x.sub_(imagenet_mean).div_(imagenet_std)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@torch.inference_mode()
def proxy_embedding(image_encoder, pixels: torch.Tensor, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """(B, out_chans, S/16, S/16) (256 x 64 x 64 for SAM) ProxyCLIP's proxy features: SAM's
    `image_encoder` on `proxy_input` at its own input size S (1024)."""
    size = int(getattr(image_encoder, "img_size", PROXY_INPUT_SIZE))
    return image_encoder(proxy_input(pixels, size, mean, std))


@torch.inference_mode()
def proxyclip_tokens(visual, record: TrunkRecord, proxy: torch.Tensor) -> torch.Tensor:
    """(B, ph*pw, D) ProxyCLIP's features on the proxy's grid (64 x 64 for SAM), row-major.

    The attention is softmax(gamma (Sim - beta mean Sim)) with entries below 0 cut, Sim the cosine
    similarities of the proxy's positions (float32), shared by all heads; the values are the last
    block's v of the patch tokens, upsampled bilinearly from (gh, gw) to (ph, pw); out_proj, no
    residual, no MLP, no class token.
    """
    rows, cols = record.grid
    h = record.last
    if proxy.ndim != 4 or proxy.shape[0] != h.shape[0]:
        raise ValueError(f"proxy features {tuple(proxy.shape)} do not fit a batch of {h.shape[0]}")
    block = visual.transformer.resblocks[-1]
    _, _, v = _split_heads(block, h)
    heads = v.shape[0] // h.shape[0]
    head_dim = v.shape[-1]
    proxy_rows, proxy_cols = proxy.shape[-2:]
    outputs = []
    for b in range(h.shape[0]):
        unit = F.normalize(proxy[b:b + 1].float().flatten(2, 3), dim=1)
        similarity = torch.einsum("b c m, b c n -> b m n", unit, unit)
        similarity = (similarity - torch.mean(similarity) * PROXYCLIP_BETA) * PROXYCLIP_GAMMA
        similarity[similarity < 0.0] = float("-inf")
        weights = F.softmax(similarity, dim=-1)  # (1, M, M), the same for every head
        values = v[b * heads:(b + 1) * heads, 1:].reshape(heads, rows, cols, head_dim).permute(0, 3, 1, 2)
        values = F.interpolate(values, size=(proxy_rows, proxy_cols), mode="bilinear", align_corners=False)
        values = values.permute(0, 2, 3, 1).reshape(heads, proxy_rows * proxy_cols, head_dim)
        outputs.append(_merge_heads(block, torch.matmul(weights, values), 1))
    return _finish(visual, torch.cat(outputs))
