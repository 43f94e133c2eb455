#!/usr/bin/env bash
# The README's demo: build Captain Byte end to end on this CPU, then show how to serve it and ask one knowledge question.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false ANONYMIZED_TELEMETRY=False
P=.venv/bin/protege
CONFIG=${CONFIG:-configs/captain-byte.yaml}
start=$(date +%s)
$P build "$CONFIG" "$@"
echo
echo "== One knowledge question, answered from the documents with its sources =="
$P ask "$CONFIG" "How much does the Sloop server cost each month?"
echo
echo "== And one it must refuse (nothing in the documents) =="
$P ask "$CONFIG" "Who won the 1998 football world cup?"
echo
echo "Built in $(( $(date +%s) - start )) s. Next:"
echo "  $P serve $CONFIG                      # OpenAI API on http://127.0.0.1:11435/v1, Ollama API on :11435/api"
echo "  curl http://127.0.0.1:11435/v1/chat/completions -H 'Content-Type: application/json' \\"
echo "       -d '{\"model\": \"captain-byte\", \"messages\": [{\"role\": \"user\", \"content\": \"How do I reset my password?\"}]}'"
echo "  $P run captain-byte                   # chat in the terminal"
