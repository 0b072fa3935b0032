#!/usr/bin/env bash
# The whole loop on real data: train and promote a first model, serve it, let simulated users rate
# and correct its answers, retrain from the feedback, gate, promote, and watch the server swap.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false TUNELOOP_API_KEYS=demo-key
BIN=.venv/bin
PORT=${PORT:-8765}
REG=sqlite:///runs/loop-demo/registry.db
start=$(date +%s)
rm -rf runs/loop-demo
$BIN/python examples/loop_demo.py split runs/loop-demo
echo "== round 1: the first model (nothing served yet)"
$BIN/tuneloop loop -c examples/loop.yaml
echo "== serving the promoted model; users ask 2,000 questions and rate the answers"
$BIN/tuneloop serve --model promoted --registry $REG --feedback-db runs/loop-demo/feedback.db --port "$PORT" \
  --reload-interval 1 > runs/loop-demo/serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; do sleep 1; done
$BIN/python examples/loop_demo.py users "http://127.0.0.1:$PORT" runs/loop-demo/pool.jsonl --key demo-key
echo "== round 2: retrain with the feedback, gate against the served model"
$BIN/tuneloop loop -c examples/loop.yaml
sleep 3
echo "== the server now serves: $(curl -s "http://127.0.0.1:$PORT/health")"
echo "== round 3: no new feedback, so nothing changes"
$BIN/tuneloop loop -c examples/loop.yaml
$BIN/tuneloop models list --registry $REG
echo "loop demo finished in $(( $(date +%s) - start )) s; reports: runs/loop-demo/loop/round-*/run/report.html"
