"""An independent port of SC-CLIP, ResCLIP and ProxyCLIP (SAM proxy) raw maps, for the tests.

Written from the method descriptions (the project's METHODS2 reference page) and
apart from the engine on purpose. Like `dense_reference` (whose helpers it
reuses: patch embedding with the bicubic DINO resize of the positional embedding,
layer norm, linear, per-head q/k/v, out-projection, softmax), it reads the open_clip modules' weights as plain
tensors and works sequence-first, (tokens, channels), on one image, with explicit
loops over heads. Also by hand: the PIL bicubic resize of the input, the local
outlier factor and its quantile, the repair, the aggregation, the bilinear
resizes, PAMR, the per-patch mode, the SFR matrix (path check, decay, 1-D blur,
float16 roundings) and ProxyCLIP's proxy attention. The proxy network itself is
segment-anything's own `ImageEncoderViT`, passed in by the caller.

Every public map function returns a (K, g, g) float32 numpy array: the cosine of
each patch's final feature with each label feature, rows in label order, before
any upsampling, logit scale or softmax. g = R/16 for SC-CLIP and ResCLIP, 64 for
ProxyCLIP at every R.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dense_reference import embed, layer_norm, linear, out_projection, qkv_heads, softmax_rows

PATCH = 16
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# SC-CLIP
SC_BETA = 0.4
SC_MID_SCALE = 3.0
SC_RES_CLS = 0.3
LOF_NEIGHBOURS = 30
LOF_CONTAMINATION = 0.05
SC_PRE_ADJUST, SC_POST_ADJUST, SC_MULTI_START, SC_MULTI_END = 8, 3, 3, 10  # written for 12 blocks

# ResCLIP (demo.py = cfg_voc20.py)
RES_SIGMA = 5.0
RES_RCS = (2.0, 0.6)  # (tau_r, lambda_r)
RES_SFR = (2.1, 0.6)  # (tau_s, lambda_s)
RES_TEMP_THD = 0.10
RES_FIRST_LOGIT_SCALE = 40.0
RES_PAMR_STEPS = 10
RES_PAMR_DILATIONS = (8, 16)
RES_RCS_START, RES_RCS_END = 5, 9  # trunk blocks, 0-based, end exclusive, written for 12 blocks

# ProxyCLIP
PROXY_BETA = 1.2
PROXY_GAMMA = 3.0
SAM_SIZE = 1024


# --- input -------------------------------------------------------------------------------------

def _pil_bicubic(x: float) -> float:
    """Pillow's bicubic kernel (a = -0.5), evaluated in double in Pillow's order."""
    a = -0.5
    if x < 0.0:
        x = -x
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def pil_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) int64 fixed-point (22 bits) weights of Pillow's 8-bit bicubic resample along one axis
    (support widened by the scale when shrinking, weights normalised to sum 1 then rounded)."""
    precision_bits = 22
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    weights = np.zeros((out_size, in_size), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_pil_bicubic((x + xmin - center + 0.5) / filterscale) for x in range(xmax)]
        total = 0.0
        for w in k:
            total += w
        for x, w in enumerate(k):
            w = w / total if total != 0.0 else w
            weights[xx, xmin + x] = int(-0.5 + w * (1 << precision_bits)) if w < 0 else \
                int(0.5 + w * (1 << precision_bits))
    return weights


def _pil_pass(image: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One 8-bit pass along `axis` (0 rows, 1 columns): rounded fixed-point sum, clipped to 0..255."""
    moved = np.moveaxis(image, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1]).astype(np.float64)  # integer sums < 2**53: exact in float64
    sums = flat @ weights.T.astype(np.float64) + (1 << 21)
    out = np.clip(np.floor(sums / (1 << 22)), 0, 255).astype(np.uint8)
    return np.moveaxis(out.reshape(*moved.shape[:-1], -1), -1, axis)


def pil_bicubic_resize(image_rgb: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8: Pillow's `Image.resize((size, size), BICUBIC)` of an RGB uint8 image,
    horizontal pass first, each pass rounded to 8 bits."""
    height, width, _ = image_rgb.shape
    out = image_rgb
    if width != size:
        out = _pil_pass(out, pil_bicubic_matrix(width, size), axis=1)
    if height != size:
        out = _pil_pass(out, pil_bicubic_matrix(height, size), axis=0)
    return np.ascontiguousarray(out)


def clip_pixels(image_rgb: np.ndarray, resolution: int) -> torch.Tensor:
    """(3, R, R) float32 CLIP input: bicubic resize, / 255, CLIP mean and std."""
    resized = torch.from_numpy(pil_bicubic_resize(image_rgb, resolution).astype(np.float32)).permute(2, 0, 1)
    unit = resized / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return (unit - mean) / std


# --- shared pieces ----------------------------------------------------------------------------

def scaled_index(index: int, depth: int) -> int:
    """A layer index written for 12 blocks, for a model with `depth` blocks: unchanged at depth >= 12,
    else floor(index * depth / 12 + 1/2) (integer arithmetic: no float rounding at the halves)."""
    if depth >= 12:
        return index
    return (2 * index * depth + 12) // 24


def bilinear_matrix(source: int, target: int) -> list[tuple[int, int, float, float]]:
    """Per target index: (i0, i1, w0, w1) of PyTorch's bilinear, align_corners=False, given output size
    (float32 scale source/target, source index clamped at 0, upper neighbour clamped to the edge)."""
    scale = np.float32(source) / np.float32(target)
    rows = []
    for i in range(target):
        real = np.float32(scale * np.float32(i + 0.5) - np.float32(0.5))
        real = max(real, np.float32(0.0))
        i0 = int(math.floor(real))
        i1 = i0 + (1 if i0 < source - 1 else 0)
        lam = np.float32(min(max(real - np.float32(i0), np.float32(0.0)), np.float32(1.0)))
        rows.append((i0, i1, float(np.float32(1.0) - lam), float(lam)))
    return rows


def bilinear_resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(C, height, width) float32 bilinear resize of (C, h, w), align_corners=False, no antialias."""
    rows = bilinear_matrix(x.shape[1], height)
    cols = bilinear_matrix(x.shape[2], width)
    r0, r1 = torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])
    c0, c1 = torch.tensor([c[0] for c in cols]), torch.tensor([c[1] for c in cols])
    h0 = torch.tensor([r[2] for r in rows], dtype=torch.float32).view(1, -1, 1)
    h1 = torch.tensor([r[3] for r in rows], dtype=torch.float32).view(1, -1, 1)
    w0 = torch.tensor([c[2] for c in cols], dtype=torch.float32).view(1, 1, -1)
    w1 = torch.tensor([c[3] for c in cols], dtype=torch.float32).view(1, 1, -1)
    # a * b + c * d with the first product fused, as PyTorch's CPU kernel compiles on FMA machines
    top = _fma(x[:, r0][:, :, c0], w0, x[:, r0][:, :, c1] * w1)
    bottom = _fma(x[:, r1][:, :, c0], w0, x[:, r1][:, :, c1] * w1)
    return _fma(top, h0, bottom * h1)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 a * b + c with one rounding (the product is exact in float64)."""
    return (a.double() * b.double() + c.double()).float()


def trunk_states(visual, pixels: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """[h_1 .. h_{L-1}] ((N+1, C) each, class token first) and, per trunk block, its per-head attention
    probabilities softmax(q k^T / sqrt(d)) over all N+1 tokens."""
    x = embed(visual, pixels[None])
    states, attentions = [], []
    for block in list(visual.transformer.resblocks)[:-1]:
        q, k, v, scale = qkv_heads(block, x)
        probabilities = [softmax_rows((qh * scale) @ kh.t()) for qh, kh in zip(q, k)]
        x = x + out_projection(block, [p @ vh for p, vh in zip(probabilities, v)])
        hidden = linear(layer_norm(x, block.ln_2), block.mlp.c_fc.weight, block.mlp.c_fc.bias)
        x = x + linear(block.mlp.gelu(hidden), block.mlp.c_proj.weight, block.mlp.c_proj.bias)
        states.append(x)
        attentions.append(probabilities)
    return states, attentions


def finish(visual, tokens: torch.Tensor, label_features: torch.Tensor) -> torch.Tensor:
    """(K, n): cosine of ln_post(tokens) @ proj with each label feature."""
    projected = layer_norm(tokens, visual.ln_post) @ visual.proj
    unit = projected / projected.norm(dim=-1, keepdim=True)
    return (unit @ label_features.t()).t()


def row_normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


# --- SC-CLIP -----------------------------------------------------------------------------------

def lof_scores(points: torch.Tensor, neighbours: int = LOF_NEIGHBOURS) -> torch.Tensor:
    """(N,) SC-CLIP's local outlier factor on squared Euclidean distances, where every reach distance is
    the row's own k-distance: LRD_i = k / kd_i, LOF_i = mean over i's k neighbours of LRD_j / LRD_i."""
    n = points.shape[0]
    distances = torch.empty(n, n, dtype=points.dtype)
    for first in range(0, n, 64):  # 64 rows at a time: the norm of each difference, then squared
        difference = points[first:first + 64, None, :] - points[None, :, :]
        distances[first:first + 64] = torch.sqrt((difference ** 2).sum(dim=-1)) ** 2
    order = torch.sort(distances, dim=1, stable=True)
    near_indices = order.indices[:, 1:neighbours + 1]  # drop the first: the point itself
    k_distance = order.values[:, neighbours]
    lrd = neighbours / k_distance
    return (lrd[near_indices] / lrd[:, None]).mean(dim=1)


def linear_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The linear-interpolation quantile of float32 values as SC-CLIP's torch.quantile computed it: the
    rank float32(q) * (n - 1) rounded to float32, the samples below and above it, ATen's two-sided lerp.
    With q = 0.95 and n = 441 the rank is exactly 418, so tau is that sample. (Newer torch releases
    compute the rank in float64, 417.9999947..., which can put tau just below that sample.)"""
    ordered = torch.sort(values.float()).values
    rank = torch.tensor(q, dtype=torch.float32) * torch.tensor(ordered.numel() - 1, dtype=torch.float32)
    below, above = int(torch.floor(rank)), int(torch.ceil(rank))
    weight = rank - below
    start, end = ordered[below], ordered[above]
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


def lof_outliers(scores: torch.Tensor, contamination: float = LOF_CONTAMINATION) -> torch.Tensor:
    """(N,) bool: scores strictly above their (1 - contamination) quantile."""
    return scores > linear_quantile(scores, 1 - contamination)


def repair(tokens: torch.Tensor, outliers: torch.Tensor, grid: int) -> torch.Tensor:
    """Each outlier row of a (g*g, C) raster grid replaced by the mean of its in-grid, non-outlier
    8-neighbours (read from the unrepaired input); an outlier without such neighbours is kept."""
    out = tokens.clone()
    for index in torch.nonzero(outliers).flatten().tolist():
        row, col = divmod(index, grid)
        valid = [(row + dr) * grid + (col + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                 if (dr, dc) != (0, 0) and 0 <= row + dr < grid and 0 <= col + dc < grid
                 and not bool(outliers[(row + dr) * grid + (col + dc)])]
        if valid:
            total = torch.zeros_like(tokens[index])
            for neighbour in valid:
                total = total + tokens[neighbour]
            out[index] = total / len(valid)
    return out


def thresholded(similarity: torch.Tensor, beta: float = SC_BETA) -> torch.Tensor:
    return torch.where(similarity < beta, torch.zeros_like(similarity), similarity)


def aggregate(tokens: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    return (affinity / (affinity.sum(dim=-1, keepdim=True) + 1e-6)) @ tokens


def scclip_last_block(block, tokens: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """SC-CLIP's last block on patch tokens only: per head, the mean of the softmax of the cut,
    centred, scaled guidance similarity and the key-key softmax, times v; out_proj; no residual, no MLP."""
    _, k, v, scale = qkv_heads(block, tokens)
    guide = (similarity - similarity.mean()) * SC_MID_SCALE
    guide = torch.where(guide < 0, torch.full_like(guide, float("-inf")), guide)
    guide_probabilities = softmax_rows(guide)
    heads = []
    for kh, vh in zip(k, v):
        weights = (guide_probabilities + softmax_rows(kh @ kh.t() * scale)) / 2
        heads.append(weights @ vh)
    return out_projection(block, heads)


@torch.no_grad()
def scclip_features(visual, pixels: torch.Tensor) -> torch.Tensor:
    """(N, C) SC-CLIP's final patch tokens (before ln_post) for one (3, R, R) CLIP input."""
    grid = pixels.shape[-1] // PATCH
    states, _ = trunk_states(visual, pixels)
    depth = len(visual.transformer.resblocks)
    pre, post = scaled_index(SC_PRE_ADJUST, depth), scaled_index(SC_POST_ADJUST, depth)
    start, end = scaled_index(SC_MULTI_START, depth), scaled_index(SC_MULTI_END, depth)
    last = states[-1]
    outliers = lof_outliers(lof_scores(last[1:]))
    repaired = repair(last[1:], outliers, grid)
    guide = row_normalised(repair(states[pre][1:], outliers, grid))
    similarity = guide @ guide.t()
    affinity_pre = thresholded(similarity)
    early = row_normalised(states[post][1:])
    affinity_post = thresholded(early @ early.t())
    block = visual.transformer.resblocks[-1]
    x2 = scclip_last_block(block, aggregate(repaired, affinity_pre), similarity) + SC_RES_CLS * last[0]
    x3 = aggregate(x2, affinity_post)
    summed = torch.zeros_like(last)
    for j in range(start, end):
        summed = summed + states[j]
    x4 = aggregate(scclip_last_block(block, summed[1:], similarity) + SC_RES_CLS * summed[0], affinity_post)
    return x3 + x4


def scclip_map(model, image_rgb_uint8: np.ndarray, resolution: int, label_features: torch.Tensor) -> np.ndarray:
    """(K, g, g) float32 SC-CLIP raw map of an RGB uint8 image at R = `resolution`."""
    visual, grid = model.visual, resolution // PATCH
    with torch.no_grad():
        tokens = scclip_features(visual, clip_pixels(image_rgb_uint8, resolution))
        return finish(visual, tokens, label_features.float()).reshape(-1, grid, grid).numpy().astype(np.float32)


# --- ResCLIP -----------------------------------------------------------------------------------

def resclip_last_block(block, tokens: torch.Tensor, omega: torch.Tensor, rcs: list[torch.Tensor],
                       sfr: torch.Tensor | None = None) -> torch.Tensor:
    """ResCLIP's last block on all N+1 tokens: key-key logits (mixed with the float16 SFR term when
    given), + Omega, softmax, mixed with the RCS attention; out_proj; no residual, no MLP."""
    tau_s, lambda_s = RES_SFR
    tau_r, lambda_r = RES_RCS
    _, k, v, scale = qkv_heads(block, tokens)
    heads = []
    for head, (kh, vh) in enumerate(zip(k, v)):
        logits = kh @ kh.t() * scale
        if sfr is not None:  # sfr: the float16 lambda_s * S_hat of `sfr_term`
            logits = tau_s * ((1 - lambda_s) * logits + sfr.float())
        probabilities = softmax_rows(logits + omega)
        probabilities = tau_r * ((1 - lambda_r) * probabilities + lambda_r * rcs[head])
        heads.append(probabilities @ vh)
    return out_projection(block, heads)


def _replicate_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """x (..., h, w) padded by `pad` on every side with its edge values."""
    height, width = x.shape[-2:]
    rows = torch.clamp(torch.arange(-pad, height + pad), 0, height - 1)
    cols = torch.clamp(torch.arange(-pad, width + pad), 0, width - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


def _neighbours(x: torch.Tensor, dilation: int, centre: bool) -> list[torch.Tensor]:
    """x at the offsets {-t, 0, t}^2 (row-major; the centre only if asked), replicate padding."""
    height, width = x.shape[-2:]
    padded = _replicate_pad(x, dilation)
    return [padded[..., dilation + dy * dilation:dilation + dy * dilation + height,
                   dilation + dx * dilation:dilation + dx * dilation + width]
            for dy in (-1, 0, 1) for dx in (-1, 0, 1) if centre or (dy, dx) != (0, 0)]


def pamr(guide: torch.Tensor, mask: torch.Tensor, iterations: int = RES_PAMR_STEPS,
         dilations: tuple[int, ...] = RES_PAMR_DILATIONS) -> torch.Tensor:
    """(K, h, w) pixel-adaptive mask refinement of `mask` (K, h, w) guided by `guide` (3, h, w):
    per-channel unbiased std over the 9 samples per dilation, affinities -|I - I_n| / (1e-8 + 0.1 std)
    averaged over channels and soft-maxed over the 8 non-centre neighbours per dilation, then
    `iterations` times m <- sum_n affinity_n m_n."""
    samples = [s for d in dilations for s in _neighbours(guide, d, centre=True)]
    mean = torch.zeros_like(guide)
    for s in samples:
        mean = mean + s
    mean = mean / len(samples)
    variance = torch.zeros_like(guide)
    for s in samples:
        variance = variance + (s - mean) ** 2
    std = torch.sqrt(variance / (len(samples) - 1))
    others = [s for d in dilations for s in _neighbours(guide, d, centre=False)]
    logits = torch.stack([(-(guide - s).abs() / (1e-8 + 0.1 * std)).mean(dim=0) for s in others])
    affinity = torch.exp(logits - logits.max(dim=0, keepdim=True).values)
    affinity = affinity / affinity.sum(dim=0, keepdim=True)  # (16, h, w)
    for _ in range(iterations):
        refined = torch.zeros_like(mask)
        for n, shifted in enumerate(s for d in dilations for s in _neighbours(mask, d, centre=False)):
            refined = refined + affinity[n] * shifted
        mask = refined
    return mask


def pixel_labels(probabilities: torch.Tensor, threshold: float = RES_TEMP_THD) -> torch.Tensor:
    """(h, w) int64: the first most probable label of each pixel, 0 where its probability < threshold."""
    best = probabilities.max(dim=0).values
    labels = torch.zeros(best.shape, dtype=torch.int64)
    found = torch.zeros(best.shape, dtype=torch.bool)
    for k in range(probabilities.shape[0]):
        first = (probabilities[k] == best) & ~found
        labels[first] = k
        found |= first
    labels[best < threshold] = 0
    return labels


def patch_labels(labels: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """(h/p, w/p) int64: the most frequent pixel label of each patch x patch block, ties to the smallest."""
    rows, cols = labels.shape[0] // patch, labels.shape[1] // patch
    out = torch.zeros(rows, cols, dtype=torch.int64)
    for r in range(rows):
        for c in range(cols):
            block = labels[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].flatten().tolist()
            counts: dict[int, int] = {}
            for value in block:
                counts[value] = counts.get(value, 0) + 1
            top = max(counts.values())
            out[r, c] = min(value for value, count in counts.items() if count == top)
    return out


def path_valid(labels: torch.Tensor) -> torch.Tensor:
    """(N, N) bool, ResCLIP's check_path for a (g, g) label grid: the label at every rounded point
    p_i (1 - t_s) + p_j t_s, s = 0 .. steps_ij, equals label i, where t = linspace(0, 1, T + 1) runs in
    global steps 1/T (T the largest steps over all pairs), so only part of a short segment is checked."""
    grid = labels.shape[0]
    n = grid * grid
    coords = torch.tensor([divmod(i, grid) for i in range(n)], dtype=torch.int64)  # (row, col)
    steps = (coords[:, None, :] - coords[None, :, :]).abs().max(dim=-1).values
    total = int(steps.max())
    t = torch.linspace(0, 1, total + 1).view(1, 1, -1, 1)  # float32
    flat = labels.flatten()
    valid = torch.empty(n, n, dtype=torch.bool)
    checked = torch.arange(total + 1).view(1, 1, -1) <= steps.view(n, n, 1)  # s <= steps_ij
    for first in range(0, n, 64):  # 64 start points at a time: (64, N, T+1, 2) points
        starts = coords[first:first + 64].view(-1, 1, 1, 2)
        points = torch.round(starts * (1 - t) + coords.view(1, n, 1, 2) * t).long()
        found = labels[points[..., 0], points[..., 1]]  # (64, N, T+1)
        agrees = (found == flat[first:first + 64].view(-1, 1, 1)) | ~checked[first:first + 64]
        valid[first:first + 64] = agrees.all(dim=-1)
    return valid


def sfr_mask(labels: torch.Tensor) -> torch.Tensor:
    """(N, N) float32 for a (g, g) label grid: 1 where two patches share a label, multiplied by
    exp(-steps_ij / T) where the path check from i to j fails."""
    grid = labels.shape[0]
    n = grid * grid
    flat = labels.flatten()
    same = (flat[:, None] == flat[None, :]).float()
    coords = torch.tensor([divmod(i, grid) for i in range(n)], dtype=torch.int64)
    steps = (coords[:, None, :] - coords[None, :, :]).abs().max(dim=-1).values
    decay = torch.exp(-steps.float() / int(steps.max()))
    return torch.where(path_valid(labels), same, same * decay)


def sfr_matrix(labels: torch.Tensor, sigma: float = RES_SIGMA) -> torch.Tensor:
    """((N+1), (N+1)) float32 SFR matrix S before its scaling by max: `sfr_mask`, each row blurred as a
    1-D signal over the raster index (Gaussian, min(N, int(6 sigma + 1)) taps made odd, zero padding),
    clamped at 0, row-normalised; zero class row and column."""
    same = sfr_mask(labels)
    n = same.shape[0]
    size = min(n, int(6 * sigma + 1))
    size = size if size % 2 == 1 else size + 1
    half = size // 2
    weights = torch.exp(-(torch.arange(-half, half + 1, dtype=torch.float32) ** 2) / (2 * sigma ** 2))
    weights = weights / weights.sum()
    blurred = torch.zeros_like(same)
    for u in range(-half, half + 1):  # out[:, j] += w[u] * in[:, j + u], zero outside 0 .. N-1
        lo, hi = max(0, -u), min(n, n - u)
        if lo < hi:
            blurred[:, lo:hi] = blurred[:, lo:hi] + weights[u + half] * same[:, lo + u:hi + u]
    blurred = torch.clamp(blurred, min=0)
    blurred = blurred / (blurred.sum(dim=1, keepdim=True) + 1e-8)
    out = torch.zeros(n + 1, n + 1)
    out[1:, 1:] = blurred
    return out


def sfr_term(sfr: torch.Tensor) -> torch.Tensor:
    """float16 lambda_s * fp16(S / max S), as added to the float32 logits."""
    s_hat = (sfr / sfr.max()).to(torch.float16)
    return RES_SFR[1] * s_hat


def rcs_attention(attentions: list[list[torch.Tensor]], depth: int) -> list[torch.Tensor]:
    """Per head, the mean attention probabilities of the RCS trunk blocks (5 .. 8 for 12 blocks)."""
    blocks = range(scaled_index(RES_RCS_START, depth), scaled_index(RES_RCS_END, depth))
    out = []
    for head in range(len(attentions[0])):
        total = torch.zeros_like(attentions[0][head])
        for b in blocks:
            total = total + attentions[b][head]
        out.append(total / len(blocks))
    return out


def neighbourhood_bias(grid: int, sigma: float = RES_SIGMA) -> torch.Tensor:
    """Omega ((N+1), (N+1)) float32: exp(-((r1-r2)^2 + (c1-c2)^2) / (2 sigma^2)) between patches (in
    float64, then rounded); zero class row and column."""
    n = grid * grid
    rows = (torch.arange(n, dtype=torch.float64) // grid).view(-1, 1)
    cols = (torch.arange(n, dtype=torch.float64) % grid).view(-1, 1)
    omega = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    omega[1:, 1:] = torch.exp(-((rows - rows.t()) ** 2 + (cols - cols.t()) ** 2) / (2 * sigma * sigma))
    return omega.float()


def resclip_cosine(visual, h_last: torch.Tensor, rcs: list[torch.Tensor], grid: int,
                   label_features: torch.Tensor, sfr: torch.Tensor | None = None) -> torch.Tensor:
    """(K, g, g) cosine map of one ResCLIP last-block pass (with the SFR term when given)."""
    out = resclip_last_block(visual.transformer.resblocks[-1], h_last, neighbourhood_bias(grid), rcs, sfr)
    return finish(visual, out[1:], label_features.float()).reshape(-1, grid, grid)


def first_pass_labels(cosine: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """(g, g) int64 patch labels from a first-pass (K, g, g) cosine map: bilinear to R x R, PAMR guided
    by the CLIP input (3, R, R), softmax of 40 x over labels, per-pixel label (0 below the threshold),
    per-patch mode."""
    size = pixels.shape[-1]
    refined = pamr(pixels, bilinear_resize(cosine, size, size))
    logits = refined * RES_FIRST_LOGIT_SCALE
    probabilities = torch.exp(logits - logits.max(dim=0, keepdim=True).values)
    probabilities = probabilities / probabilities.sum(dim=0, keepdim=True)
    return patch_labels(pixel_labels(probabilities))


@torch.no_grad()
def resclip_outputs(model, image_rgb_uint8: np.ndarray, resolution: int,
                    label_features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """ResCLIP's (K, g, g) float32 raw map and the (g, g) patch labels of its first pass."""
    visual, grid = model.visual, resolution // PATCH
    pixels = clip_pixels(image_rgb_uint8, resolution)
    states, attentions = trunk_states(visual, pixels)
    rcs = rcs_attention(attentions, len(visual.transformer.resblocks))
    labels = first_pass_labels(resclip_cosine(visual, states[-1], rcs, grid, label_features), pixels)
    cosine = resclip_cosine(visual, states[-1], rcs, grid, label_features, sfr_term(sfr_matrix(labels)))
    return cosine.numpy().astype(np.float32), labels.numpy()


def resclip_map(model, image_rgb_uint8: np.ndarray, resolution: int, label_features: torch.Tensor) -> np.ndarray:
    """(K, g, g) float32 ResCLIP raw map (second, SFR-refined pass). Depends on the whole label list and
    its order: the first pass predicts among all labels and gives low-confidence pixels label 0."""
    return resclip_outputs(model, image_rgb_uint8, resolution, label_features)[0]


# --- ProxyCLIP ---------------------------------------------------------------------------------

def sam_proxy_input(pixels: torch.Tensor) -> torch.Tensor:
    """(3, 1024, 1024): the CLIP input un-normalised, ImageNet-normalised, bilinear to 1024 x 1024."""
    channels = []
    for c in range(3):
        unit = pixels[c] * CLIP_STD[c] + CLIP_MEAN[c]
        channels.append((unit - torch.tensor(IMAGENET_MEAN[c])) / torch.tensor(IMAGENET_STD[c]))
    return bilinear_resize(torch.stack(channels), SAM_SIZE, SAM_SIZE)


def proxy_logits(embedding: torch.Tensor) -> torch.Tensor:
    """(n, n) gamma (Sim - beta mean Sim) for a (C, h, w) proxy embedding, each position's channels
    L2-normalised (Sim in float32, as a torch einsum), before the cut at 0."""
    flat = embedding.flatten(1)
    unit = flat / torch.clamp(torch.linalg.vector_norm(flat, dim=0, keepdim=True), min=1e-12)
    similarity = torch.einsum("cm,cn->mn", unit, unit)
    return (similarity - similarity.mean() * PROXY_BETA) * PROXY_GAMMA


def proxy_attention(logits: torch.Tensor) -> torch.Tensor:
    """Row softmax of the proxy logits with every entry below 0 cut to -inf (shared by all heads)."""
    return softmax_rows(torch.where(logits < 0, torch.full_like(logits, float("-inf")), logits))


@torch.no_grad()
def proxyclip_outputs(model, sam_image_encoder, image_rgb_uint8: np.ndarray, resolution: int,
                      label_features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """ProxyCLIP's (K, 64, 64) float32 raw map, and per proxy position the distance of its attention
    row's logits from the cut, min |logit| (64, 64): where that is a few float32 steps or less, the
    last bit of the SAM embedding decides whether an entry is kept, and the map there can move by
    ~1e-5 between machines and libraries."""
    visual = model.visual
    pixels = clip_pixels(image_rgb_uint8, resolution)
    grid = resolution // PATCH
    states, _ = trunk_states(visual, pixels)
    embedding = sam_image_encoder(sam_proxy_input(pixels)[None])[0]
    height, width = embedding.shape[-2:]
    logits = proxy_logits(embedding)
    attention = proxy_attention(logits)
    block = visual.transformer.resblocks[-1]
    _, _, v, _ = qkv_heads(block, states[-1])
    heads = []
    for vh in v:
        patches = vh[1:].t().reshape(-1, grid, grid)  # (d, g, g)
        upsampled = bilinear_resize(patches, height, width).flatten(1).t()  # (h*w, d)
        heads.append(attention @ upsampled)
    cosine = finish(visual, out_projection(block, heads), label_features.float())
    margin = logits.abs().min(dim=1).values
    return (cosine.reshape(-1, height, width).numpy().astype(np.float32),
            margin.reshape(height, width).numpy())


def proxyclip_map(model, sam_image_encoder, image_rgb_uint8: np.ndarray, resolution: int,
                  label_features: torch.Tensor) -> np.ndarray:
    """(K, 64, 64) float32 ProxyCLIP raw map with SAM's image encoder (1024 px input) as the proxy."""
    return proxyclip_outputs(model, sam_image_encoder, image_rgb_uint8, resolution, label_features)[0]
