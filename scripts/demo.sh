#!/usr/bin/env bash
# Set up and run the whole toolchain end to end on sample photos, offline:
# sample photos -> preprocess -> train a face LoRA (tiny model) -> generate + rank portraits -> stylize.
# Real use swaps the tiny model for a real base model (see configs/example.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${1:-demo_out}
mkdir -p "$OUT"
python - "$OUT/photos" <<'PY'
import sys
from facechain.samples import write_demo_photos
paths = write_demo_photos(sys.argv[1])
print(f"demo: wrote {len(paths)} sample photos to {sys.argv[1]}")
PY
[ -f "$OUT/tiny_sd15/model_index.json" ] || facechain make-tiny-model "$OUT/tiny_sd15"
sh train_lora.sh "$OUT/tiny_sd15" "" "" "$OUT/photos" "$OUT/processed" "$OUT/lora" \
  --resolution 64 --max_train_steps 20 --checkpointing_steps 10 --backend dlib
python run_inference.py --config configs/demo.yaml
facechain stylize --model "$OUT/tiny_sd15" --content "$OUT/processed/000.png" --style "$OUT/photos/06_someone_else.png" \
  --method portrait-diffusion --steps 10 --out "$OUT/stylized.png"
echo "demo: done. Inspect $OUT/processed/report.json, $OUT/lora/train_log.jsonl, $OUT/generated/manifest.json"
