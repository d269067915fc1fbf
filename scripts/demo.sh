#!/usr/bin/env bash
# The main job end to end on a small built-in dataset, on CPU, from a fresh machine:
#   setup → build → synthesise brightfield data → augment → check the data → train a tiny SAM
#   from random weights → export → automatic instance segmentation of held-out images → scores.
# Everything lands in dat/demo/, runs/demo_cpu/ and final_models/demo_cpu.pt; running it again
# starts over.
#
#   scripts/demo.sh          # the demo
#   scripts/demo.sh --lora   # then the LoRA variant (configs/demo_cpu_lora.yaml): the demo's
#                            # model fine-tuned with rank-4 adapters on its image encoder,
#                            # exported merged and in micro_sam's PEFT layout, and scored
set -euo pipefail
cd "$(dirname "$0")/.."
LORA=0
for arg in "$@"; do
    case $arg in
        --lora) LORA=1 ;;
        -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done
scripts/setup.sh
echo "[demo] building (release)"
cargo build --release -q
BIN=target/release
CONFIG=configs/demo_cpu.yaml

echo "[demo] validating $CONFIG (data folders are checked after they are written)"
$BIN/sam-train validate --no-path-checks "$CONFIG"

echo "[demo] synthesising brightfield images into dat/demo/"
rm -rf dat/demo runs/demo_cpu runs/demo_cpu.data_check.json final_models/demo_cpu.pt runs/demo_cpu_lora final_models/demo_cpu_lora*.pt
$BIN/sam-augment synth --out dat/demo/raw --count 100 --size 128 --seed 1 --cells-per-512 160
$BIN/sam-augment synth --out dat/demo/val --count 3 --size 128 --seed 2 --cells-per-512 160
$BIN/sam-augment synth --out dat/demo/test --count 4 --size 128 --seed 3 --cells-per-512 160

echo "[demo] augmenting"

$BIN/sam-augment run --config "$CONFIG" --overwrite

echo "[demo] checking the training and validation data (report: runs/demo_cpu.data_check.json)"
$BIN/sam-augment check --config "$CONFIG" --show 3

if $BIN/sam-train train --help >/dev/null 2>&1; then
    echo "[demo] training (tiny model, random weights, CPU)"
    $BIN/sam-train train "$CONFIG" --no-progress
else
    echo "[demo] this build has no 'sam-train train' yet: stopping after the data steps"
    exit 0
fi

echo "[demo] automatic instance segmentation + evaluation of the held-out test images"
if [ -x scripts/run_inference.sh ] && [ -x $BIN/sam-infer ]; then
    scripts/run_inference.sh final_models/demo_cpu.pt dat/demo/test runs/demo_cpu/inference
fi

echo
echo "[demo] done:"
echo "  data:        dat/demo/{raw,augmented,val,test} (checked: runs/demo_cpu.data_check.json)"
echo "  run folder:  runs/demo_cpu/ (config.yaml, checkpoints/, logs/metrics.csv, logs/curves.png)"
echo "  model:       final_models/demo_cpu.pt (micro_sam format: model_state + decoder_state)"
[ -f runs/demo_cpu/inference/summary.csv ] && { echo "  scores:      runs/demo_cpu/inference/summary.csv"; cat runs/demo_cpu/inference/summary.csv; }
[ -f runs/demo_cpu/inference/report.html ] && echo "  report:      runs/demo_cpu/inference/report.html (open it in a browser)"
# The last validation row: box-prompted mask IoU on the held-out images (column val_box_iou).
awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "val_box_iou") c = i }
         NR > 1 && $c != "NaN" { v = $c }
         END { if (v != "") printf "  box-prompted mask IoU on held-out images after training: %.3f (target >= 0.6)\n", v }' \
    runs/demo_cpu/logs/metrics.csv

if [ "$LORA" = 1 ]; then
    LORA_CONFIG=configs/demo_cpu_lora.yaml
    echo
    echo "[demo] LoRA: fine-tuning final_models/demo_cpu.pt with rank-4 adapters on its image encoder ($LORA_CONFIG)"
    $BIN/sam-train train "$LORA_CONFIG" --no-progress
    echo "[demo] LoRA: exporting micro_sam's PEFT layout (the run exported the merged model itself)"
    $BIN/sam-train export --checkpoint runs/demo_cpu_lora/checkpoints/demo_cpu_lora/best \
        --output final_models/demo_cpu_lora_peft.pt --peft-layout micro-sam --with-decoder
    if [ -x scripts/run_inference.sh ] && [ -x $BIN/sam-infer ]; then
        scripts/run_inference.sh final_models/demo_cpu_lora.pt dat/demo/test runs/demo_cpu_lora/inference
    fi
    echo "[demo] LoRA done:"
    echo "  run folder:  runs/demo_cpu_lora/ (checkpoints hold the adapters and heads, not the frozen encoder)"
    echo "  models:      final_models/demo_cpu_lora.pt (merged), final_models/demo_cpu_lora_peft.pt (micro_sam PEFT layout)"
    [ -f runs/demo_cpu_lora/inference/summary.csv ] && { echo "  scores:      runs/demo_cpu_lora/inference/summary.csv"; cat runs/demo_cpu_lora/inference/summary.csv; }
fi
true
