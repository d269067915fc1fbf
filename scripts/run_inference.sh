#!/usr/bin/env bash
# Validate a checkpoint on a folder of images: segment them with sam-infer and, when ground-truth
# labels are there, score the result with sam-eval.
#
#   scripts/run_inference.sh CHECKPOINT INPUT OUTPUT [sam-infer auto flags...]
#
# CHECKPOINT  a checkpoint file, a name under final_models/, or a micro_sam model name.
# INPUT       a folder of images, or a folder with images/ and labels/ (matched by file stem).
# OUTPUT      gets labels/, overlays/, objects/ from sam-infer and, with labels, summary.csv,
#             summary_pooled.csv, per_image.csv, report.json and report.html from sam-eval.
#
# Extra flags go to `sam-infer auto` (e.g. --mode amg or --mode apg, --tile-shape 768 768, --config X.yaml).
# Binaries: $SAM_INFER / $SAM_EVAL if set, else target/release/, built when missing.
set -euo pipefail

if [[ $# -lt 3 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    [[ $# -lt 3 ]] && exit 2 || exit 0
fi
checkpoint=$1
input=$2
output=$3
shift 3

root="$(cd "$(dirname "$0")/.." && pwd)"
sam_infer=${SAM_INFER:-$root/target/release/sam-infer}
sam_eval=${SAM_EVAL:-$root/target/release/sam-eval}
if [[ ! -x "$sam_infer" || ! -x "$sam_eval" ]]; then
    echo "[run_inference] building sam-infer and sam-eval (release)" >&2
    (cd "$root" && cargo build --release -p sam-infer-cli -p sam-eval-cli)
fi

if [[ ! -d "$input" ]]; then
    echo "error: INPUT $input is not a folder" >&2
    exit 2
fi
images=$input
labels=""
if [[ -d "$input/images" ]]; then
    images=$input/images
    [[ -d "$input/labels" ]] && labels=$input/labels
fi

echo "[run_inference] segmenting $images with $checkpoint into $output" >&2
"$sam_infer" auto --checkpoint "$checkpoint" --input "$images" --output "$output" "$@"

if [[ -n "$labels" ]]; then
    echo "[run_inference] scoring $output/labels against $labels" >&2
    "$sam_eval" labels --gt "$labels" --pred "$output/labels" --out "$output" --quiet
    echo "[run_inference] $output/summary.csv:" >&2
    cat "$output/summary.csv"
else
    echo "[run_inference] no labels/ folder in $input: segmentation only" >&2
fi
