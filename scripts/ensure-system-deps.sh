#!/usr/bin/env bash
# Installs the system programs that the tests and `make run` start as real processes.
# `ensure-system-deps.sh run`: only what `make run` needs; no argument: the tests' too.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# `make run` waits for the service and prints its example with curl.
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ "${1:-test}" != run ]; then
  # Debian's Chromium: the playground's browser test drives it through Playwright.
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  # Deployment tests: Prometheus scrapes the service; docker-compose validates
  # docker-compose.yml (no Docker engine needed).
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
  command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${need[*]} (install them with apt-get as root)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
