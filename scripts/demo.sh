#!/usr/bin/env bash
# Set up and run the whole toolchain end to end on sample photos, offline:
# sample photos -> preprocess -> train a face LoRA (tiny model) -> generate + rank portraits -> eval -> stylize.
# Real use swaps the tiny model for a real base model (see configs/example.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=runs   # configs/demo.yaml reads the tiny model from runs/tiny-sd15 and writes runs/demo-output
mkdir -p "$OUT"
python - "$OUT/photos" <<'PY'
import sys
from facechain.samples import write_demo_photos
paths = write_demo_photos(sys.argv[1])
print(f"demo: wrote {len(paths)} sample photos to {sys.argv[1]}")
PY
[ -f "$OUT/tiny-sd15/model_index.json" ] || facechain make-tiny-model "$OUT/tiny-sd15"
PREPROCESS_FLAGS="--face-backend dlib" PYTHON=python sh train_lora.sh "$OUT/tiny-sd15" "" "" "$OUT/photos" "$OUT/processed" "$OUT/lora" \
  --resolution 64 --max_train_steps 20 --checkpointing_steps 10 --face_backend dlib --resume  # --resume: a rerun of the demo continues (here: re-exports) its own run
python run_inference.py --config configs/demo.yaml --lora-dir "$OUT/lora" --processed-dir "$OUT/processed"
facechain eval "$OUT/demo-output" --reference "$OUT/processed" --backend dlib  # likeness report: noise from the tiny model shows no face
facechain stylize --base-model "$OUT/tiny-sd15" --content "$OUT/processed/000.png" --style "$OUT/photos/06_someone_else.png" \
  --method portrait-diffusion --num-inference-steps 10 --resolution 64 --output-dir "$OUT/stylized"
echo "demo: done. Inspect $OUT/processed/report.json, $OUT/lora/train_log.jsonl, $OUT/demo-output/manifest.json, $OUT/demo-output/eval/report.png, $OUT/stylized/"
