"""Per-photo rejection (never fatal to the run) and the run-level error when nothing is kept."""

from __future__ import annotations

from facechain.errors import FacechainError


class PhotoRejected(Exception):
    """One photo is not usable. ``code`` is a stable short reason; ``detail`` says the measurement."""

    def __init__(self, code: str, detail: str, scores: dict | None = None):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.scores = scores or {}


class NoPhotosKept(FacechainError):
    """Every photo was rejected; the message lists each with its reason."""
