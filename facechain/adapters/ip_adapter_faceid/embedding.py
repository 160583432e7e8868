"""The person's embedding for IP-Adapter-FaceID: the mean of the unit-length ArcFace embeddings of one face
per photo, with each face's aligned crop (the Plus variants' image encoder reads those), cached by the
photos' bytes (:func:`identity_embedding`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facechain.adapters.ip_adapter_faceid.weights import adapters_home
from facechain.errors import FacechainError, InputError
import hashlib
import json
from facechain.errors import require
from facechain.io import save_safetensors

logger = logging.getLogger(__name__)

CLIP_CROP = 224  # the face crop the Plus variants' image encoder sees (insightface's norm_crop at 224 px)


@dataclass(frozen=True)
class IdentityEmbedding:
    vector: np.ndarray  # float32 (D,), unit length
    photos: list[str]  # the photos it was averaged over
    backend: str
    crops: np.ndarray | None = None  # uint8 (N, 224, 224, 3): each photo's face, aligned (insightface's norm_crop)


def _cache_key(files: list[Path], backend: str) -> str:
    h = hashlib.sha256(f"identity-v2|{backend}".encode())
    for path in files:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:32]


def _read_cached(path: Path) -> IdentityEmbedding | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            return IdentityEmbedding(f.get_tensor("embedding").astype(np.float32), json.loads(meta["photos"]), meta["backend"],
                                     f.get_tensor("crops"))
    except Exception as exc:  # a damaged cache file is measured again, never trusted
        logger.info("identity embedding cache %s unreadable (%s); measuring again", path, type(exc).__name__)
        return None


def cached_embedding_files(photos: str | os.PathLike) -> list[Path]:
    """The cache files holding embeddings of the photos in ``photos`` (any face backend's) that exist: what
    deleting those photos must delete too (the server's deletion of a person)."""
    from facechain.face.registry import available_backends
    from facechain.images import list_images

    try:
        files = list_images(Path(photos), "identity.photos folder")
    except FacechainError:  # no photos: nothing can be cached for them
        return []
    folder = adapters_home().parent / "identity"
    paths = [folder / f"{_cache_key(files, backend)}.safetensors" for backend in available_backends()]
    return [p for p in paths if p.is_file()]


def identity_embedding(photos: str | os.PathLike, analyzer, cache: bool = True) -> IdentityEmbedding:
    """The mean of the unit-length face embeddings of the photos directly in ``photos`` (one face each),
    scaled to unit length. A photo with no face, or with several, is an error naming each such photo.

    ``cache``: kept in $FACECHAIN_HOME/identity/ (default ~/.cache/facechain/identity), keyed by the
    backend and the photos' names and bytes, so a later job with the same photos skips detection. Not
    in the photos folder: that folder is the user's (or preprocessing's, whose record would count a
    stranger's file there)."""
    from facechain.images import PHOTO_MAX_MEGAPIXELS, list_images, read_image

    require("insightface", "the identity adapter's face crops (insightface.utils.face_align)")
    from insightface.utils.face_align import norm_crop

    files = list_images(Path(photos), "identity.photos folder")
    cached = adapters_home().parent / "identity" / f"{_cache_key(files, analyzer.name)}.safetensors" if cache else None
    if cached is not None and cached.is_file():
        hit = _read_cached(cached)
        if hit is not None:
            logger.info("identity embedding: cached (%s), over %d photos", cached.name, len(hit.photos))
            return hit
    vectors, used, problems, crops = [], [], [], []
    for path in files:
        try:
            img = read_image(path, "identity photo", max_megapixels=PHOTO_MAX_MEGAPIXELS)
        except FacechainError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        faces = analyzer.detect(img, max_faces=3)
        if not faces:
            problems.append(f"{path.name}: no face found")
        elif len(faces) > 1:
            problems.append(f"{path.name}: {len(faces)} faces (whose identity is meant is unclear)")
        else:
            emb = faces[0].embedding if faces[0].embedding is not None else analyzer.embed(img, faces[0])
            v = np.asarray(emb, np.float64).reshape(-1)
            vectors.append(v / max(np.linalg.norm(v), 1e-12))
            used.append(path.name)
            crops.append(norm_crop(img, landmark=np.asarray(faces[0].kps, np.float32), image_size=CLIP_CROP))
    if problems:
        raise InputError(
            f"identity.photos {photos}: every photo must show the person's face alone. Fix or remove:\n  "
            + "\n  ".join(problems) + "\n(The output folder of `facechain preprocess` holds only such crops.)")
    mean = np.mean(vectors, axis=0)
    emb = IdentityEmbedding((mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32), used, analyzer.name,
                            np.stack(crops).astype(np.uint8))
    if cached is not None:
        import torch

        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            save_safetensors(cached, {"embedding": torch.from_numpy(emb.vector), "crops": torch.from_numpy(emb.crops)},
                             metadata={"photos": json.dumps(used), "backend": analyzer.name})
        except OSError as exc:  # a read-only home: the job goes on without the cache
            logger.warning("identity embedding: could not cache it in %s (%s)", cached.parent, exc.strerror or exc)
    return emb
