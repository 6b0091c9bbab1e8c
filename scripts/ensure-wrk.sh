#!/usr/bin/env bash
# The W1/W2 benchmarks drive load with wrk (Debian package).
set -euo pipefail
command -v wrk >/dev/null && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
else
  echo "wrk not found; install Debian's 'wrk' package" >&2
  exit 1
fi
