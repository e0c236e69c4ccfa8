#!/usr/bin/env bash
# Headless Chromium for tests/test_eval_html.py (renders the `python -m eval --html` page). Needs root (apt).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium
