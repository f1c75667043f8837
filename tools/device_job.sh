#!/usr/bin/env bash
# One release job on a GPU machine: train (paper recipe, schedule scaled to EPOCHS), verify the best checkpoint
# on the test set with the whole suite, build the release folder, and stage it under $OUT in parts small enough
# to come back (each file <= 15 MiB; reassemble with tools/device_job.sh --join DIR).
#
#   DATA=/tmp/data bash tools/device_job.sh MODEL TAG EPOCHS [extra tools/train.py args]
#   bash tools/device_job.sh --join DIR           # here: cat the parts back into DIR/model.safetensors, check sha256
#
# Env: DATA (dataset root, default /tmp/data), RUNS (default runs), VERIFY_ARGS (extra tools/verify.py args),
# BENCH=1 (run tools/benchmark.py first), OUT (where results are staged; the device tool sets it).
# The lr decays x0.1 at 75% and 90% of EPOCHS, as the paper's 75/90 of 100.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--join" ]; then
    dir=${2:?usage: --join DIR}
    cat "$dir"/model.safetensors.part-* > "$dir/model.safetensors"
    want=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['pretrained_cfg']['sha256'])" "$dir/config.json")
    got=$(sha256sum "$dir/model.safetensors" | cut -d' ' -f1)
    [ "$want" = "$got" ] || { echo "error: joined weights sha256 $got != config.json $want" >&2; exit 2; }
    rm "$dir"/model.safetensors.part-*
    echo "joined $dir/model.safetensors (sha256 $got)"
    exit 0
fi

model=${1:?usage: device_job.sh MODEL TAG EPOCHS [train args]}; tag=${2:?TAG}; epochs=${3:?EPOCHS}; shift 3
data=${DATA:-/tmp/data}; run=${RUNS:-runs}/$model.$tag; out=${OUT:-$run/out}
mkdir -p "$run" "$out"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$run/job.log"; }

if [ "${BENCH:-0}" = 1 ]; then
    log "benchmark"; python3 tools/benchmark.py --model "$model" 2>&1 | tee -a "$run/job.log"
fi
log "train $model.$tag for $epochs epochs"
python3 tools/train.py --model "$model" --data "$data" --out "$run" --epochs "$epochs" \
    --milestones "$((epochs * 75 / 100)),$((epochs * 90 / 100))" --fp16 --no-progress --resume "$@" \
    2>&1 | tee -a "$run/job.log"
log "verify best checkpoint"
# shellcheck disable=SC2086
python3 tools/verify.py --model "$model" --tag "$tag" --weights "$run/best.safetensors" --data "$data" \
    --train-summary "$run/train_summary.json" --out "$run/results.json" --no-progress ${VERIFY_ARGS:-} \
    2>&1 | tee -a "$run/job.log"
log "release folder"
rm -rf "$run/cards"
python3 tools/make_card.py "$run/results.json" --out "$run/cards" 2>&1 | tee -a "$run/job.log"
folder="$run/cards/$model.$tag"
cp "$folder/config.json" "$folder/results.json" "$folder/README.md" "$run/job.log" "$out/"
split -b 15M -d "$folder/model.safetensors" "$out/model.safetensors.part-"
log "staged in $out: $(ls "$out" | tr '\n' ' ')"
