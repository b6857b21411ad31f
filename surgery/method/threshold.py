"""What a threshold value means, and a suggestion for one.

A threshold applies to raw CLIP Surgery similarity (docs/method.md §5). One
meaning everywhere (page, API, CLI, notebooks): a number above 0 is applied;
0 or no value means off (the reference min-max, every label found); anything
else (negative, not finite, above `THRESHOLD_LIMIT`, not a number) is refused.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

THRESHOLD_LIMIT = 10.0
THRESHOLD_RULE = f"a number from 0 (off) to {THRESHOLD_LIMIT:g}"


def check_threshold(threshold: object) -> float | None:
    """None (off) for None, "" or 0; the value for a finite number in (0, THRESHOLD_LIMIT]; else InputError."""
    if threshold is None or threshold == "":
        return None
    if isinstance(threshold, bool):
        raise InputError(f"Threshold must be {THRESHOLD_RULE}; got {threshold!r}.")
    try:
        value = float(threshold)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"Threshold must be {THRESHOLD_RULE}.") from None
    if not math.isfinite(value) or not 0 <= value <= THRESHOLD_LIMIT:
        raise InputError(f"Threshold must be {THRESHOLD_RULE}; got {value:g}.")
    return value if value > 0 else None


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float | None:
    """Otsu's threshold on the histogram of raw values: the cut that maximises the
    between-class variance. None for constant input (nothing to separate)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0 or values.max() <= values.min():
        return None
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    mass_low = np.cumsum(counts * centres)
    mean_low = mass_low / np.maximum(weight_low, 1)
    mean_high = (mass_low[-1] - mass_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    cut = int(np.argmax(between[:-1]))
    return float(edges[cut + 1])


def threshold_note(suggested: float | None) -> str | None:
    """Why a suggested threshold cannot be used as it is, in one line, or None when it can: a threshold is
    above 0 and at most `THRESHOLD_LIMIT` (0 is off). The app's "Suggest threshold" and calibrate's
    summary say the same."""
    if suggested is None:
        return "The values are all the same: there is no threshold to suggest."
    if not 0 < suggested <= THRESHOLD_LIMIT:
        return (f"The suggested threshold, {suggested:.3g}, is outside what a threshold can be (above 0, up to "
                f"{THRESHOLD_LIMIT:g}; 0 is off): these maps do not separate the labels from the background.")
    return None
