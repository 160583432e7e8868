#!/bin/sh
# Train a face LoRA from a folder of a person's photos (FaceChain's interface).
#
#   sh train_lora.sh BASE_MODEL REVISION SUB_PATH IMGS_DIR PROCESSED_DIR OUTPUT_DIR [trainer flags...]
#
# REVISION and SUB_PATH may be empty strings (""). Preprocessing turns IMGS_DIR into
# PROCESSED_DIR, then the trainer runs under `accelerate launch` (multi-GPU and mixed precision
# follow accelerate's own config, `accelerate config`). Trainer flags pass through, e.g.
#   --max_train_steps 400 --rank 8 --resolution 512 --mixed_precision bf16 --resume
# Start from FaceChain's generic face LoRA on FaceChain's base, as FaceChain does: --init_lora facechain
# Environment: PYTHON (interpreter, default python), PREPROCESS_FLAGS (extra flags for
# `facechain preprocess`, e.g. "--face-backend dlib").
# See docs/train.md.
set -eu

if [ "$#" -lt 6 ]; then
    echo "usage: sh train_lora.sh BASE_MODEL REVISION SUB_PATH IMGS_DIR PROCESSED_DIR OUTPUT_DIR [trainer flags...]" >&2
    echo "  REVISION and SUB_PATH may be \"\"; e.g. sh train_lora.sh ly261666/cv_portrait_model v2.0 film/film ./imgs ./processed ./output" >&2
    exit 2
fi

BASE_MODEL=$1
REVISION=$2
SUB_PATH=$3
IMGS_DIR=$4
PROCESSED_DIR=$5
OUTPUT_DIR=$6
shift 6
PYTHON=${PYTHON:-python}

# shellcheck disable=SC2086  # PREPROCESS_FLAGS is a list of flags
"$PYTHON" -m facechain preprocess "$IMGS_DIR" "$PROCESSED_DIR" ${PREPROCESS_FLAGS:-} || {
    echo "train_lora.sh: preprocessing $IMGS_DIR failed (see the message above); no training was run." >&2
    exit 1
}

# The trainer runs as a child of this script; INT/TERM/HUP sent to the script are passed on to it,
# so stopping the script stops training (the trainer also stops when its launcher dies). The last
# complete checkpoint stays; rerun with --resume to continue.
# --quiet: a trainer error is its own one-line message, without the launcher's traceback after it.
# accelerate launch sets OMP_NUM_THREADS=1 when it is unset, which would leave a CPU run on one core:
# the trainer picks its own thread count (its share of the usable cores), or the user's OMP_NUM_THREADS.
set -- --num_threads "${OMP_NUM_THREADS:-0}" "$@"
"$PYTHON" -m accelerate.commands.launch --quiet -m facechain train \
    "$BASE_MODEL" "$PROCESSED_DIR" "$OUTPUT_DIR" --revision "$REVISION" --sub_path "$SUB_PATH" "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' INT TERM HUP
status=0
wait "$child" || status=$?
while kill -0 "$child" 2>/dev/null; do  # a trapped signal ends `wait` early: wait for the trainer to stop
    status=0
    wait "$child" || status=$?
done
exit "$status"
