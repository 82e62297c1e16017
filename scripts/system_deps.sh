#!/usr/bin/env bash
# Installs the system packages the project needs, only when they are missing:
#   - a Java runtime for Spark (openjdk-17-jre-headless)
#   - with --with-browser (what `make test` passes), the test-only tools:
#     Debian's Chromium for the real-browser tests of the notifier gallery, and
#     Debian's docker-compose, whose `config` validates docker-compose.yaml (no Docker engine needed)
# Idempotent and quick when everything is present.
set -euo pipefail

need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
if [[ "${1:-}" == "--with-browser" ]]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
fi
((${#need[@]} == 0)) && exit 0

echo "system-deps: installing ${need[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "system-deps: need root or sudo to install ${need[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
# The JRE's post-install script expects this man directory on slim images.
$SUDO mkdir -p /usr/share/man/man1
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
