"""Draw the shipped OpenPose skeleton maps (poses/*.png) from the keypoints below.

    python poses/draw_poses.py            # rewrites poses/*.png

Keypoints are (x, y) fractions of a 512 x 512 canvas in the OpenPose COCO-18 order
(facechain.generate.poses.KEYPOINTS); "r_" is the person's right, which appears on the image's left.
Drawing follows the OpenPose convention (facechain.generate.poses.draw_openpose): coloured limbs on
black, so the maps work with the OpenPose ControlNets without any annotator weights. Poses
are framed like FaceChain's portraits (upper body, medium shot), plus a half and a full body.
"""

from __future__ import annotations

from pathlib import Path

POSES: dict[str, dict[str, tuple[float, float]]] = {
    "upper_body_front": {
        "nose": (0.50, 0.33), "r_eye": (0.44, 0.28), "l_eye": (0.56, 0.28), "r_ear": (0.37, 0.30),
        "l_ear": (0.63, 0.30), "neck": (0.50, 0.52), "r_shoulder": (0.25, 0.56), "l_shoulder": (0.75, 0.56),
        "r_elbow": (0.17, 0.86), "l_elbow": (0.83, 0.86),
    },
    "upper_body_turn": {
        "nose": (0.45, 0.33), "r_eye": (0.40, 0.28), "l_eye": (0.51, 0.28), "l_ear": (0.61, 0.30),
        "neck": (0.52, 0.52), "r_shoulder": (0.31, 0.57), "l_shoulder": (0.75, 0.55),
        "r_elbow": (0.26, 0.86), "l_elbow": (0.81, 0.84),
    },
    "upper_body_hand_on_chin": {
        "nose": (0.52, 0.32), "r_eye": (0.46, 0.27), "l_eye": (0.58, 0.27), "r_ear": (0.39, 0.29),
        "l_ear": (0.65, 0.29), "neck": (0.51, 0.52), "r_shoulder": (0.27, 0.57), "l_shoulder": (0.76, 0.56),
        "r_elbow": (0.28, 0.92), "r_wrist": (0.45, 0.50), "l_elbow": (0.84, 0.88),
    },
    "half_body_arms_crossed": {
        "nose": (0.50, 0.22), "r_eye": (0.46, 0.19), "l_eye": (0.54, 0.19), "r_ear": (0.42, 0.20),
        "l_ear": (0.58, 0.20), "neck": (0.50, 0.34), "r_shoulder": (0.36, 0.37), "l_shoulder": (0.64, 0.37),
        "r_elbow": (0.33, 0.58), "l_elbow": (0.67, 0.58), "r_wrist": (0.60, 0.55), "l_wrist": (0.40, 0.55),
        "r_hip": (0.42, 0.78), "l_hip": (0.58, 0.78),
    },
    "full_body_standing": {
        "nose": (0.50, 0.12), "r_eye": (0.48, 0.10), "l_eye": (0.52, 0.10), "r_ear": (0.46, 0.11),
        "l_ear": (0.54, 0.11), "neck": (0.50, 0.19), "r_shoulder": (0.42, 0.21), "l_shoulder": (0.58, 0.21),
        "r_elbow": (0.39, 0.36), "l_elbow": (0.61, 0.36), "r_wrist": (0.38, 0.50), "l_wrist": (0.62, 0.50),
        "r_hip": (0.45, 0.50), "l_hip": (0.55, 0.50), "r_knee": (0.45, 0.70), "l_knee": (0.55, 0.70),
        "r_ankle": (0.45, 0.90), "l_ankle": (0.55, 0.90),
    },
}


def main(out_dir: Path = Path(__file__).resolve().parent, size: int = 512) -> list[Path]:
    from facechain.io import save_image
    from facechain.generate.poses import draw_openpose

    written = []
    for name, keypoints in POSES.items():
        written.append(save_image(out_dir / f"{name}.png", draw_openpose(keypoints, (size, size))))
    return written


if __name__ == "__main__":
    for path in main():
        print(path)
