#!/usr/bin/env bash
# Create .venv (if missing) and install facechain with everything it needs.
# Picks onnxruntime-gpu when nvidia-smi sees a GPU, onnxruntime otherwise, and ends with exactly one
# onnxruntime build and one OpenCV wheel (`facechain doctor --fix`); `facechain doctor` reports the rest.
# dlib compiles from source the first time (about 8 minutes); pip's cache keeps the wheel after that.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip setuptools wheel
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extra=gpu
else
  extra=cpu
fi
echo "facechain setup: installing (onnxruntime build: $extra); the first install compiles dlib (~8 min)"
python -m pip install --quiet -e ".[test,$extra]"
# insightface declares the CPU 'onnxruntime' and 'opencv-python', facexlib 'opencv-python', controlnet-aux
# 'opencv-python-headless': pip installs them all, and each pair installs one module over the other.
# Leave exactly one of each (onnxruntime-gpu on a GPU machine, opencv-python-headless); fails if it cannot.
facechain doctor --fix --only onnxruntime,opencv
python - <<'PY'
import diffusers, dlib, torch
from facechain.face.backends.dlib_backend import models_dir
assert (models_dir() / "shape_predictor_68_face_landmarks.dat").is_file(), "dlib model files missing"
print(f"facechain setup: ok (torch {torch.__version__}, diffusers {diffusers.__version__}, dlib {dlib.__version__})")
PY
