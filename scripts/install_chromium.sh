#!/usr/bin/env bash
# Install Debian's Chromium: the report tests (tests/integration/test_report_browser.py) load the
# HTML report in a real headless browser. Idempotent and quick when it is there (no apt-get at all);
# runs as root with no prompts.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "install_chromium: present ($(command -v chromium))"
    exit 0
fi
source "$(dirname "$0")/_apt.sh"
apt_install install_chromium chromium
