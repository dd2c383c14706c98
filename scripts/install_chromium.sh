#!/usr/bin/env bash
# Install Debian's Chromium: the report tests (tests/integration/test_report_browser.py) load the
# HTML report in a real headless browser. Idempotent and quick when it is there (no apt-get at all);
# runs as root with no prompts.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "install_chromium: present ($(command -v chromium))"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: no apt-get here; install Chromium yourself (the report tests need it)" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
echo "install_chromium: installing chromium"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
    || $SUDO apt-get install -y --no-install-recommends chromium   # again, loudly, to show why
echo "install_chromium: done"
