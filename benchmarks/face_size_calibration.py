"""Face size per backend: how the keypoint measure (facechain.face.Face.size) compares with each
backend's own box, on real photos. Prints the figures behind the constants in
facechain/face/types.py (see benchmarks/RESULTS.md, "Face size").

    python benchmarks/face_size_calibration.py                    # dlib (always available)
    python benchmarks/face_size_calibration.py --backend all      # + insightface when its pack is present
    python benchmarks/face_size_calibration.py --photos a.jpg b.png  # your own photos too

Photos: scikit-image's astronaut, insightface's sample images t1.jpg (a group, also at 2x) and
Tom_Hanks_54745.png (a 112 px face aligned to ArcFace's 5-point template, also at 3x), plus any
given with --photos. Sections:

1. per face: box w x h, max(w, h), the eye-to-mouth distance d_em and the inter-ocular distance
   d_eyes, Face.size, and the ratios. With SCRFD (insightface) ``box/d_em`` is the calibration
   constant itself (SCRFD_SIZE_PER_EYE_MOUTH, 2.8) and ``box/size`` should be ~1.0; with dlib
   ``size/box`` says how much larger FaceChain's measure is than dlib's box.
2. scale sweep: the astronaut resized in 2% steps; Face.size / scale stays put, dlib's box jumps
   between its image-pyramid levels (steps of 6/5).
3. roll sweep: the astronaut turned -20..20 degrees; Face.size / upright.
4. detection limit: each photo shrunk until the backend finds no face; the smallest Face.size
   found (what ``min_face_px`` should be, in Face.size pixels).
5. ArcFace's 112 px template (insightface's alignment target): its Face.size, and dlib's keypoints
   on Tom_Hanks_54745.png (a photo aligned to that template) against the template's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facechain import samples  # noqa: E402
from facechain.face import Face, get_analyzer  # noqa: E402
from facechain.face.types import FRONTAL_EYE_MOUTH_PER_EYES, SCRFD_SIZE_PER_EYE_MOUTH  # noqa: E402
from facechain.images import read_image  # noqa: E402

# insightface's ArcFace alignment template (src points of face_align.norm_crop, 112 x 112)
ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def distances(kps: np.ndarray) -> tuple[float, float]:
    k = np.asarray(kps, np.float64)
    return float(np.linalg.norm((k[3] + k[4]) / 2 - (k[0] + k[1]) / 2)), float(np.linalg.norm(k[1] - k[0]))


def photos(extra: list[str]) -> dict[str, np.ndarray]:
    out = {"astronaut": samples.astronaut()}
    try:
        t1 = samples.group_photo()
        hanks = samples.other_person()
        out.update({"t1": t1, "t1@2x": cv2.resize(t1, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC),
                    "hanks112": hanks, "hanks112@3x": cv2.resize(hanks, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)})
    except Exception as exc:  # insightface not installed: its sample images are missing
        print(f"(insightface sample images unavailable: {exc})")
    for p in extra:
        out[Path(p).name] = read_image(p, "photo")
    return out


def per_face(analyzer, images: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    print(f"\n## 1. per face ({analyzer.name})")
    print(f"{'photo':<14}{'box w x h':>12}{'max(w,h)':>9}{'d_em':>7}{'d_eyes':>7}{'em/eyes':>8}{'size':>7}"
          f"{'size/box':>9}{'box/d_em':>9}")
    for name, img in images.items():
        for f in analyzer.detect(img, embed=False):
            em, eyes = distances(f.kps)
            r = {"photo": name, "box": f.box_side, "em": em, "eyes": eyes, "size": f.size}
            rows.append(r)
            print(f"{name:<14}{f.width:>6.0f} x{f.height:>4.0f}{f.box_side:>9.1f}{em:>7.1f}{eyes:>7.1f}{em / eyes:>8.2f}"
                  f"{f.size:>7.1f}{f.size / f.box_side:>9.3f}{f.box_side / em:>9.3f}")
    if rows:
        ratio = np.array([r["size"] / r["box"] for r in rows])
        per_em = np.array([r["box"] / r["em"] for r in rows])
        em_eyes = np.array([r["em"] / r["eyes"] for r in rows])
        print(f"faces {len(rows)}: size/box median {np.median(ratio):.3f} (range {ratio.min():.3f}-{ratio.max():.3f}); "
              f"box/d_em median {np.median(per_em):.3f}; d_em/d_eyes median {np.median(em_eyes):.3f}")
    return rows


def scale_sweep(analyzer, image: np.ndarray) -> None:
    print(f"\n## 2. scale sweep, astronaut ({analyzer.name}): value / scale, relative to scale 1")
    base = analyzer.detect(image, embed=False)[0]
    sizes, boxes = [], []
    for s in np.arange(0.80, 1.61, 0.04):
        im = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
        found = analyzer.detect(im, embed=False)
        if not found:
            print(f"  scale {s:.2f}: no face")
            continue
        f = found[0]
        sizes.append(f.size / s / base.size)
        boxes.append(f.box_side / s / base.box_side)
        print(f"  scale {s:.2f}: size {f.size:6.1f} ({sizes[-1]:.3f})   box {f.box_side:5.0f} ({boxes[-1]:.3f})")
    print(f"spread (max/min): size {max(sizes) / min(sizes):.3f}, box {max(boxes) / min(boxes):.3f}")


def rotate(image: np.ndarray, deg: float) -> np.ndarray:
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def roll_sweep(analyzer, image: np.ndarray) -> None:
    print(f"\n## 3. roll sweep, astronaut ({analyzer.name}): relative to upright")
    base = analyzer.detect(image, embed=False)[0]
    for deg in (-20, -15, -10, -5, 5, 10, 15, 20):
        found = analyzer.detect(rotate(image, deg), embed=False)
        if not found:
            print(f"  {deg:+3d} deg: no face")
            continue
        f = found[0]
        print(f"  {deg:+3d} deg: size {f.size / base.size:.3f}   box {f.box_side / base.box_side:.3f}")


def detection_limit(analyzer, images: dict[str, np.ndarray]) -> None:
    print(f"\n## 4. detection limit ({analyzer.name}): smallest Face.size found while shrinking by 2% steps")
    lows = []
    for name, img in images.items():
        if name.endswith("@2x") or name.endswith("@3x"):
            continue
        if max(img.shape[:2]) < 400:  # a small image is enlarged first, so there is room to shrink
            img = cv2.resize(img, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
        n0 = len(analyzer.detect(img, embed=False))
        smallest: dict[int, float] = {}
        s = 1.0
        while s > 0.05:
            im = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            found = analyzer.detect(im, embed=False)
            if not found:
                break
            for i, f in enumerate(found):
                smallest[i] = f.size
            s *= 0.98
        if smallest:
            low = min(smallest.values())
            lows.append(low)
            print(f"  {name}: {n0} face(s); last found at scale {s / 0.98:.3f}, smallest size {low:.1f} px")
    if lows:
        print(f"smallest Face.size found: {min(lows):.1f}-{max(lows):.1f} px (min_face_px of {analyzer.name}: "
              f"{analyzer.min_face_px})")


def template_check(images: dict[str, np.ndarray], analyzer) -> None:
    em, eyes = distances(ARCFACE_112)
    size = Face(bbox=np.array([0, 0, 112, 112], np.float32), score=1.0, kps=ARCFACE_112, backend="template").size
    print("\n## 5. ArcFace's 112 px template")
    print(f"template: d_em {em:.2f}, d_eyes {eyes:.2f}, em/eyes {em / eyes:.3f}, Face.size {size:.1f} px of 112")
    if "hanks112" in images and analyzer.name == "dlib":
        found = analyzer.detect(images["hanks112"], embed=False)
        if found:
            f = found[0]
            e2, y2 = distances(f.kps)
            print(f"dlib on Tom_Hanks_54745.png (aligned to it): d_em {e2:.2f} ({e2 / em:.3f} x template), d_eyes "
                  f"{y2:.2f} ({y2 / eyes:.3f} x), keypoints {np.round(f.kps, 1).tolist()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="dlib", help="dlib, insightface or all")
    ap.add_argument("--photos", nargs="*", default=[], help="more photos to measure")
    ap.add_argument("--quick", action="store_true", help="per-face table and template only")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never try a download: a missing pack is reported
    print(f"constants: SCRFD_SIZE_PER_EYE_MOUTH {SCRFD_SIZE_PER_EYE_MOUTH}, "
          f"FRONTAL_EYE_MOUTH_PER_EYES {FRONTAL_EYE_MOUTH_PER_EYES}")
    images = photos(args.photos)
    names = ["dlib", "insightface"] if args.backend == "all" else [args.backend]
    for name in names:
        try:
            analyzer = get_analyzer(name)
        except Exception as exc:
            print(f"\n# {name}: not available ({type(exc).__name__}: {exc})")
            continue
        print(f"\n# {name}: {analyzer!r}")
        per_face(analyzer, images)
        if not args.quick:
            scale_sweep(analyzer, images["astronaut"])
            roll_sweep(analyzer, images["astronaut"])
            detection_limit(analyzer, images)
        template_check(images, analyzer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
