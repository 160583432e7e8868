"""Preprocessing settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from facechain.config import setting
from facechain.errors import InputError, excerpt


@dataclass(frozen=True)
class PreprocessConfig:
    RENAMED: ClassVar[dict[str, str]] = {"backend": "face_backend"}

    size: int = setting("side of the square output images (FaceChain: 512)", default=512)
    face_backend: str = setting("face analysis backend: auto, insightface or dlib", default="auto")
    trigger_word: str = setting("token the LoRA learns for the person (FaceChain: <fcsks>)", default="<fcsks>")
    mask: str = setting("head mask: auto (parsing weights if present, else landmarks), parsing, landmarks, none", default="auto")
    retouch: bool = setting("edge-preserving skin smoothing (off by default)", default=False)
    retouch_strength: float = setting("0..1 blend of the smoothed skin", default=0.5)
    several_faces_ratio: float = setting("keep the largest face only if its area is at least this many times the next real face (FaceChain: 4)", default=4.0)
    min_face_size: int = setting(
        "reject faces whose size (FaceChain's measure: max side of an SCRFD box, from the keypoints) is below"
        " this many source pixels; 80: the crop enlarges the face at most ~2x to its 156 px at 512", default=80)
    min_detector_score: float | None = setting("quality gate on the detector score; default: the backend's real-face score + 0.2", default=None)
    blur_threshold: float = setting("reject when the variance of the Laplacian inside the face (at output size) is below this", default=30.0)
    identity_check: bool = setting("drop photos whose identity is far from the set's medoid (needs 3+ kept photos)", default=True)
    max_megapixels: float = setting("reject images larger than this (decompression bombs)", default=150.0)
    detect_size: int = setting("long side the photo is resized to for face detection (FaceChain: 1024)", default=1024)
    workers: int = setting("photos processed in parallel (0: one per core, up to 4, for 4+ photos)", default=0)
    orient_size: int = setting("long side used to pick the rotation (0/90/180/270)", default=800)
    reference_size: int = setting(
        "keep the best photo's aligned crop at up to this side (its own resolution, never upscaled) as "
        "reference/hires.png, the sharp source of face fusion for large outputs such as SDXL's 1024 px; 0: "
        "none (fusion then uses the size-px crop)", default=1024)
    allow_pickle: bool = setting("allow the face-parsing weights' pickle file (.pth, loaded tensors-only); only for trusted files", default=False)
    allow_other_files: bool = setting("write into an output folder that holds files facechain did not write (they are never touched)", default=False)

    def __post_init__(self):
        if self.size < 64 or self.size % 8:
            raise InputError(f"size must be a multiple of 8 and at least 64, got {self.size}")
        if self.mask not in ("auto", "parsing", "landmarks", "none"):
            raise InputError(f"mask must be one of ['auto', 'parsing', 'landmarks', 'none'], got {excerpt(self.mask)}")
        if self.reference_size and (self.reference_size < self.size or self.reference_size % 8):
            raise InputError(f"reference_size must be 0 (none) or a multiple of 8 of at least size ({self.size}), got "
                             f"{self.reference_size}")
        if self.several_faces_ratio < 1:
            raise InputError(f"several_faces_ratio must be >= 1, got {self.several_faces_ratio}")
        if not 0 <= self.retouch_strength <= 1:
            raise InputError(f"retouch_strength must be in [0, 1], got {self.retouch_strength}")
        if not self.trigger_word.strip():
            raise InputError("trigger_word must not be empty")
