"""Errors a person can act on.

Everything the engine refuses is raised as a `UserError` subclass whose message
says what went wrong and what to do. The CLI prints it on one line and the app
shows it in the page; anything else is a bug and is logged server-side only.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by input or environment, with an actionable message."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, corrupt or of an unsupported layout."""


class WeightsUnavailable(CheckpointError):
    """Weights could not be obtained (offline, hub unreachable, not cached)."""


class InputError(UserError):
    """An image, a label list or an option is unusable."""
