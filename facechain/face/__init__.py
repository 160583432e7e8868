"""Face analysis used by every stage: detection, keypoints, landmarks, identity, attributes.

    from facechain.face import get_analyzer, similarity
    analyzer = get_analyzer("auto")          # insightface if its models load, else dlib
    faces = analyzer.detect(rgb_uint8)       # largest first, weak detections dropped
    score = similarity(faces[0], other_face) # >= SAME_PERSON_THRESHOLD (0.5): same person
"""

from facechain.face.registry import available_backends, get_analyzer, register_backend
from facechain.face.similarity import SAME_PERSON_THRESHOLD, is_same_person, similarity, similarity_matrix
from facechain.face.types import Face, FaceAnalyzer, kps_face_size

__all__ = [
    "Face", "FaceAnalyzer", "kps_face_size", "get_analyzer", "register_backend", "available_backends",
    "similarity", "similarity_matrix", "is_same_person", "SAME_PERSON_THRESHOLD",
]
