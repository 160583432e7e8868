"""Photo preprocessing: load, orient, face rule, align + crop, head mask, retouch, quality gate,
identity consistency, caption. See :func:`preprocess`."""

from facechain.preprocess.config import PreprocessConfig
from facechain.preprocess.errors import NoPhotosKept, PhotoRejected
from facechain.preprocess.pipeline import PhotoEntry, PreprocessResult, preprocess, summary_line

__all__ = ["PreprocessConfig", "PreprocessResult", "PhotoEntry", "preprocess", "summary_line", "NoPhotosKept", "PhotoRejected"]
