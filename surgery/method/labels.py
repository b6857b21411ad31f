"""Parsing what a person types into labels: `person, bench, cat+grass`."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from ..errors import InputError
from .prompts import clip_bpe, label_fits, label_token_count

MAX_LABELS = 16
MAX_LABEL_CHARS = 1000  # before tokenising; longer input is cut here first
SEPARATORS = re.compile(r"[,;\n\r]+")


@dataclass(frozen=True)
class Label:
    """One target: a single text, or several parts joined by `+` (one mask from all parts)."""

    parts: tuple[str, ...]

    @property
    def text(self) -> str:
        return "+".join(self.parts)

    @property
    def is_combined(self) -> bool:
        return len(self.parts) > 1


@dataclass(frozen=True)
class ParsedLabels:
    labels: tuple[Label, ...]
    notes: tuple[str, ...] = ()

    @property
    def texts(self) -> list[str]:
        return [label.text for label in self.labels]


# Zero-width (non-)joiners hold emoji sequences (and some scripts) together;
# tag characters make subdivision flags. Both are format characters kept as typed.
_JOINERS = {"\u200c", "\u200d"}


def _keep(ch: str) -> bool:
    return ch in _JOINERS or "\U000e0020" <= ch <= "\U000e007f" or unicodedata.category(ch)[0] != "C"


def _clean(text: str) -> str:
    # Whitespace controls (tab, vertical tab, NEL) separate words; other control characters are dropped.
    text = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or _keep(ch))
    text = " ".join(text.split())
    return text if any(unicodedata.category(ch)[0] != "C" for ch in text) else ""  # not only joiners


def _fit_to_context(part: str, notes: list[str]) -> str:
    if label_fits(part):
        return part
    tokens = clip_bpe.encode(part)
    keep = len(tokens)
    while keep > 1 and not label_fits(clip_bpe.decode(tokens[:keep]).strip()):
        keep -= 1
    shortened = clip_bpe.decode(tokens[:keep]).strip()
    notes.append(
        f"'{part[:40]}…' is longer than CLIP's 77-token context "
        f"({label_token_count(part)} tokens); it was shortened to '{shortened}'."
    )
    return shortened


def parse_labels(text: str | None, max_labels: int = MAX_LABELS) -> ParsedLabels:
    """Split on commas (or semicolons/new lines), `+` joins parts of one target.

    Empty entries and empty `+` parts are dropped, duplicates (ignoring case, as
    CLIP's tokenizer does) are removed with a note, over-long labels are shortened
    with a note. Raises `InputError` when nothing usable is left or there are too many.
    """
    if text is None or not isinstance(text, str):
        raise InputError("Type at least one label, e.g. 'person, bench, cat+grass'.")
    notes: list[str] = []
    labels: list[Label] = []
    seen: set[str] = set()
    for raw in SEPARATORS.split(text[:MAX_LABEL_CHARS * max(1, max_labels)]):
        raw_parts = [_clean(part)[:MAX_LABEL_CHARS] for part in raw.split("+")]
        parts = [part for part in raw_parts if part]
        if not parts:
            continue
        if len(parts) < len(raw_parts):
            notes.append(f"'{_clean(raw)}' had an empty '+' part; it was read as '{'+'.join(parts)}'.")
        parts = [_fit_to_context(part, notes) for part in parts]
        unique_parts: dict[str, str] = {}
        for part in parts:  # first spelling wins; CLIP's tokenizer ignores case
            unique_parts.setdefault(part.lower(), part)
        label = Label(tuple(unique_parts.values()))
        key = label.text.lower()
        if key in seen:
            notes.append(f"'{label.text}' was given more than once; it is shown once.")
            continue
        seen.add(key)
        labels.append(label)
    if not labels:
        raise InputError("No labels found. Type one or more labels separated by commas, e.g. 'person, bench'.")
    if len(labels) > max_labels:
        raise InputError(f"{len(labels)} labels given; the limit is {max_labels}. Remove some and try again.")
    return ParsedLabels(tuple(labels), tuple(notes))
