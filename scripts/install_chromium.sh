#!/usr/bin/env bash
# Debian's chromium for the browser tests (Playwright drives the system browser: its own
# download is not reachable offline). Nothing to do when it is already there.
set -euo pipefail
command -v chromium >/dev/null && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update
$SUDO apt-get install -y chromium
