#!/usr/bin/env bash
# prepare → train → eval → report on the embedded defaults with real data (see examples/demo.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
BIN=.venv/bin
start=$(date +%s)
rm -rf runs/demo
$BIN/python examples/trec.py runs/demo/trec.jsonl
$BIN/tuneloop prepare -c examples/demo.yaml
$BIN/tuneloop train -c examples/demo.yaml
$BIN/tuneloop eval runs/demo/run -c examples/demo.yaml
echo "demo finished in $(( $(date +%s) - start )) s; report: runs/demo/run/report.html"
