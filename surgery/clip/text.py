"""Text features: the prompt ensemble, encoded only as far as needed (docs/method.md §3).

The text transformer is causal, so the EOT token's feature depends only on
positions up to it: encoding the first `n` positions (`n` = longest EOT index
+ 1 in the batch) gives the same features as all 77, several times faster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from ..method.prompts import prompt_templates, tokenize

ENCODE_CHUNK = 512  # sequences per text-transformer call: bounds peak memory


@torch.inference_mode()
def encode_token_batch(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """EOT features `@ text_projection` (n, c), not normalised, from the truncated context."""
    tokens = tokens.to(model.token_embedding.weight.device)
    eot_index = tokens.argmax(dim=-1)  # EOT has the largest id
    length = int(eot_index.max()) + 1
    x = model.token_embedding(tokens[:, :length]) + model.positional_embedding[:length]
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), eot_index]
    return x @ model.text_projection


@torch.inference_mode()
def prompt_ensemble(model: CLIP, labels: list[str], templates: tuple[str, ...] | None = None) -> torch.Tensor:
    """(K, c) L2-normalised ensemble features, one row per label.

    Labels are batched together by context length: each label is encoded up to its
    own longest EOT, with the other labels needing that same length. A label's
    feature then depends on the label alone, never on what else was asked in the
    same request, so cached and freshly computed features are bit-identical (the
    CLI and the app give the same result.json).
    """
    templates = templates or prompt_templates()
    per_label = [tokenize([template.format(label) for template in templates]) for label in labels]
    lengths = [int(tokens.argmax(dim=-1).max()) + 1 for tokens in per_label]
    features = torch.empty(len(labels), len(templates), model.text_projection.shape[1],
                           device=model.text_projection.device)
    labels_per_call = max(1, ENCODE_CHUNK // len(templates))
    for length in sorted(set(lengths)):
        group = [i for i, n in enumerate(lengths) if n == length]
        for start in range(0, len(group), labels_per_call):
            chunk = group[start:start + labels_per_call]
            encoded = encode_token_batch(model, torch.cat([per_label[i] for i in chunk]))
            features[chunk] = encoded.float().view(len(chunk), len(templates), -1)
    features = F.normalize(features, dim=-1).mean(dim=1)
    return F.normalize(features, dim=-1)
