"""The prompts: CLIP Surgery's 85 templates, OpenAI's 80 ImageNet templates, the 59-class background
vocabulary, and CLIP's tokenizer (docs/method.md §3, §9). Text and token ids only; `surgery.clip.text` runs the network.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import torch
from open_clip.tokenizer import _tokenizer as clip_bpe  # OpenAI's BPE, as open_clip ships it

CONTEXT_LENGTH = 77


@lru_cache(maxsize=None)
def prompt_templates() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("prompt_templates.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


@lru_cache(maxsize=None)
def imagenet_templates() -> tuple[str, ...]:
    """OpenAI's 80 ImageNet templates, the ensemble MaskCLIP, SCLIP, ClearCLIP and NACLIP use."""
    text = resources.files(__package__).joinpath("imagenet_templates.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


@lru_cache(maxsize=None)
def background_vocabulary() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("background_vocabulary.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def tokenize(texts: list[str]) -> torch.Tensor:
    """(n, 77) int64 token ids; over-long texts are truncated with EOT kept last."""
    return clip_bpe(texts, context_length=CONTEXT_LENGTH)


def label_token_count(label: str) -> int:
    """BPE tokens of the label alone (without SOT/EOT)."""
    return len(clip_bpe.encode(label))


def label_fits(label: str) -> bool:
    """Whether every template with this label fits the 77-token context untruncated."""
    longest_template = max(len(clip_bpe.encode(t.replace("{}", ""))) for t in prompt_templates())
    return label_token_count(label) + longest_template + 2 <= CONTEXT_LENGTH
