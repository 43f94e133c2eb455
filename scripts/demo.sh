#!/usr/bin/env bash
# The README's demo: set up .venv, build Captain Byte end to end on this CPU, ask one knowledge question and one it
# must refuse, then print where the time went (set-up, each build stage from build.json, the questions).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false ANONYMIZED_TELEMETRY=False
P=.venv/bin/protege
CONFIG=${CONFIG:-configs/captain-byte.yaml}
t0=$(date +%s)
bash scripts/setup.sh
t1=$(date +%s)
$P build "$CONFIG" "$@"
t2=$(date +%s)
echo
echo "== One knowledge question, answered from the documents with its sources =="
$P ask "$CONFIG" "How much does the Sloop server cost each month?"
echo
echo "== And one it must refuse (nothing in the documents) =="
$P ask "$CONFIG" "Who won the 1998 football world cup?"
t3=$(date +%s)
echo
.venv/bin/python - "$CONFIG" "$t1" "$((t1 - t0))" "$((t2 - t1))" "$((t3 - t2))" <<'PY'
"""Per-phase times of this run; a stage's own seconds come from build.json, and a stage this run skipped (its
inputs unchanged) shows 0."""
import sys
from datetime import datetime

from protege.config_file import load_config
from protege.paths import AssistantPaths, read_manifest

config, started, setup, build, ask = sys.argv[1], *map(int, sys.argv[2:])
stages = read_manifest(AssistantPaths.for_name(load_config(config).name)).get("stages", {})


def ran_now(stage: dict) -> bool:
    done = stage.get("finished_at")
    return bool(done) and datetime.fromisoformat(done).timestamp() >= started


rows = [("set-up (.venv, llama-cpp-python)", setup)]
rows += [(f"  build: {name}", round(s.get("seconds", 0)) if ran_now(s) else 0) for name, s in stages.items()]
rows += [("build (all stages, with start-up)", build), ("two questions", ask), ("total", setup + build + ask)]
print("== Where the time went (seconds) ==")
for label, secs in rows:
    print(f"{label:<36}{secs:>7}")
PY
echo
echo "Next:"
echo "  $P serve $CONFIG                      # OpenAI API on http://127.0.0.1:11435/v1, Ollama API on :11435/api"
echo "  curl http://127.0.0.1:11435/v1/chat/completions -H 'Content-Type: application/json' \\"
echo "       -d '{\"model\": \"captain-byte\", \"messages\": [{\"role\": \"user\", \"content\": \"How do I reset my password?\"}]}'"
echo "  $P run captain-byte                   # chat in the terminal"
