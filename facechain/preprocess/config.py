"""Preprocessing settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from facechain.errors import InputError


@dataclass(frozen=True)
class PreprocessConfig:
    RENAMED: ClassVar[dict[str, str]] = {"backend": "face_backend"}

    size: int = field(default=512, metadata={"help": "side of the square output images (FaceChain: 512)"})
    face_backend: str = field(default="auto", metadata={"help": "face analysis backend: auto, insightface or dlib"})
    trigger_word: str = field(default="<fcsks>", metadata={"help": "token the LoRA learns for the person (FaceChain: <fcsks>)"})
    mask: str = field(default="auto", metadata={"help": "head mask: auto (parsing weights if present, else landmarks), parsing, landmarks, none"})
    retouch: bool = field(default=False, metadata={"help": "edge-preserving skin smoothing (off by default)"})
    retouch_strength: float = field(default=0.5, metadata={"help": "0..1 blend of the smoothed skin"})
    several_faces_ratio: float = field(default=4.0, metadata={"help": "keep the largest face only if its area is at least this many times the next real face (FaceChain: 4)"})
    min_face_size: int = field(default=80, metadata={"help": "reject faces whose size (FaceChain's measure: max side of an SCRFD box, from the keypoints) is below this many source pixels; 80: the crop enlarges the face at most ~2x to its 156 px at 512"})
    min_detector_score: float | None = field(default=None, metadata={"help": "quality gate on the detector score; default: the backend's real-face score + 0.2"})
    blur_threshold: float = field(default=30.0, metadata={"help": "reject when the variance of the Laplacian inside the face (at output size) is below this"})
    identity_check: bool = field(default=True, metadata={"help": "drop photos whose identity is far from the set's medoid (needs 3+ kept photos)"})
    max_megapixels: float = field(default=150.0, metadata={"help": "reject images larger than this (decompression bombs)"})
    detect_size: int = field(default=1024, metadata={"help": "long side the photo is resized to for face detection (FaceChain: 1024)"})
    workers: int = field(default=0, metadata={"help": "photos processed in parallel (0: one per core, up to 4, for 4+ photos)"})
    orient_size: int = field(default=800, metadata={"help": "long side used to pick the rotation (0/90/180/270)"})
    reference_size: int = field(default=1024, metadata={"help": "keep the best photo's aligned crop at up to this side (its own resolution, never upscaled) as reference/hires.png, the sharp source of face fusion for large outputs such as SDXL's 1024 px; 0: none (fusion then uses the size-px crop)"})
    allow_pickle: bool = field(default=False, metadata={"help": "allow the face-parsing weights' pickle file (.pth, loaded tensors-only); only for trusted files"})
    allow_other_files: bool = field(default=False, metadata={"help": "write into an output folder that holds files facechain did not write (they are never touched)"})

    def __post_init__(self):
        if self.size < 64 or self.size % 8:
            raise InputError(f"size must be a multiple of 8 and at least 64, got {self.size}")
        if self.mask not in ("auto", "parsing", "landmarks", "none"):
            raise InputError(f"mask must be one of ['auto', 'parsing', 'landmarks', 'none'], got {self.mask!r}")
        if self.reference_size and (self.reference_size < self.size or self.reference_size % 8):
            raise InputError(f"reference_size must be 0 (none) or a multiple of 8 of at least size ({self.size}), got "
                             f"{self.reference_size}")
        if self.several_faces_ratio < 1:
            raise InputError(f"several_faces_ratio must be >= 1, got {self.several_faces_ratio}")
        if not 0 <= self.retouch_strength <= 1:
            raise InputError(f"retouch_strength must be in [0, 1], got {self.retouch_strength}")
        if not self.trigger_word.strip():
            raise InputError("trigger_word must not be empty")
