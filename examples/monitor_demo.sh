#!/usr/bin/env bash
# Watching the served model on real data: train and serve a TREC question classifier, send
# in-domain traffic (the monitor must stay quiet), then SMS messages (it must alarm); the alarm
# starts a round (`tuneloop loop --once`), and in-domain traffic to the model served after it.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false TUNELOOP_API_KEYS=demo-key
BIN=${BIN:-.venv/bin}
PORT=${PORT:-8766}
DEMO=runs/monitor-demo
REG=sqlite:///$DEMO/registry.db
start=$(date +%s)
rm -rf $DEMO
$BIN/python examples/loop_demo.py split $DEMO
echo "== round 1: the first model (eval fits its temperature and keeps its reference predictions)"
$BIN/tuneloop loop -c examples/monitor.yaml
echo "== serving the promoted model with the prediction log"
$BIN/tuneloop serve --model promoted --registry $REG --feedback-db $DEMO/feedback.db --port "$PORT" \
  --reload-interval 1 > $DEMO/serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; do sleep 1; done
$BIN/python examples/monitor_demo.py traffic "http://127.0.0.1:$PORT" $DEMO --key demo-key
echo "== the alarm starts a round"
$BIN/tuneloop loop -c examples/monitor.yaml --once
sleep 3
$BIN/python examples/monitor_demo.py after "http://127.0.0.1:$PORT" $DEMO --key demo-key
$BIN/tuneloop monitor --registry $REG --feedback-db $DEMO/feedback.db -c examples/monitor.yaml --html $DEMO/monitor.html || true
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^tuneloop_(requests_total|prediction_log_rows)' || true
echo "monitor demo finished in $(( $(date +%s) - start )) s; numbers: $DEMO/numbers.json, page: $DEMO/monitor.html"
