"""Feature surgery: subtract what all labels share (docs/method.md §4).

All functions take L2-normalised image tokens `F` (B, N, c) and text features
`T` (K, c) and return raw similarities (B, N, K).
"""

from __future__ import annotations

import torch


def plain_similarity(image_tokens: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity, the 'CLIP' map."""
    return image_tokens @ text_features.T


def surgery_across_labels(image_tokens: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """S[b,n,k] = sum_c (E[b,n,k,c] - mean_k E[b,n,k,c]), E = F * T_k * w_k.

    Summing over c first is the same sum, reordered: S = w_k (F·T_k) - mean_k w_k (F·T_k).
    That is an (N, K) computation instead of materialising (N, K, c), which is
    what lets the 59-class background vocabulary run at 512 px in milliseconds.
    Identically zero when K == 1: callers must not use it for a single label.
    """
    cosine = image_tokens @ text_features.T  # (B, N, K)
    prob = (2 * cosine[:, :1, :]).softmax(dim=-1)  # CLS row decides the class weights
    weights = prob / prob.mean(dim=-1, keepdim=True)
    weighted = cosine * weights
    return weighted - weighted.mean(dim=-1, keepdim=True)


def surgery_with_redundant(
    image_tokens: torch.Tensor, text_features: torch.Tensor, redundant_feature: torch.Tensor
) -> torch.Tensor:
    """S = F @ (T - r)^T, e.g. with r = the empty prompt's ensemble feature."""
    return image_tokens @ (text_features - redundant_feature.reshape(1, -1)).T


def presence_probabilities(cls_feature: torch.Tensor, text_features: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """(K,) softmax over the label set of CLIP's logit-scaled CLS similarities: how much
    the whole image supports each label relative to the others (CLIP's zero-shot
    classification), shown beside the maps, which say *where*."""
    return (logit_scale * (cls_feature.reshape(-1) @ text_features.T)).softmax(dim=-1)
