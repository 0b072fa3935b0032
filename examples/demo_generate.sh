#!/usr/bin/env bash
# The generation demo: FiQA → prepare → train → eval (tuned vs base zero-shot and 2-shot), see examples/generate.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
BIN=${BIN:-.venv/bin}
TUNELOOP="$BIN/python -m tuneloop.cli"
start=$(date +%s)
rm -rf runs/demo-generate
$BIN/python examples/fiqa.py runs/demo-generate/fiqa.jsonl
$TUNELOOP prepare -c examples/generate.yaml
$TUNELOOP train -c examples/generate.yaml
$TUNELOOP eval runs/demo-generate/run -c examples/generate.yaml
echo "generation demo finished in $(( $(date +%s) - start )) s; report: runs/demo-generate/run/report.html"
