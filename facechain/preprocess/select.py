"""Step 3: the face rule. No face: reject. Several faces: keep the largest only if its area is
at least ``ratio`` (FaceChain: 4) times the next real face, else reject. Areas are Face.size
squared (the face size every stage uses), so the rule reads the same with every backend."""

from __future__ import annotations

from facechain.face.types import Face
from facechain.preprocess.errors import PhotoRejected


def select_face(faces: list[Face], ratio: float = 4.0) -> Face:
    if not faces:
        raise PhotoRejected("no_face", "no face found in any of the four orientations")
    faces = sorted(faces, key=lambda f: -f.size)
    if len(faces) > 1:
        r = (faces[0].size / max(faces[1].size, 1e-6)) ** 2
        if r < ratio:
            raise PhotoRejected(
                "several_faces",
                f"{len(faces)} faces found and the largest is only {r:.1f}x the area of the next (needs {ratio:g}x); "
                "use a photo with the person alone or clearly in front",
                {"faces": len(faces), "area_ratio": round(r, 2)},
            )
    return faces[0]
