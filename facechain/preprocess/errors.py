"""Per-photo rejection (never fatal to the run) and the run-level error when nothing is kept."""

from __future__ import annotations

from facechain.errors import FacechainError
from facechain.images import ImageRejected


class PhotoRejected(ImageRejected):
    """One photo is not usable (an unreadable file is an :class:`ImageRejected` from the image
    reader; a photo without a usable face is this). ``code`` is a stable short reason; ``detail``
    says the measurement."""


class NoPhotosKept(FacechainError):
    """Every photo was rejected; the message lists each with its reason."""
