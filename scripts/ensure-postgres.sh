#!/usr/bin/env bash
# Make Debian's PostgreSQL server binaries available for the storage tests (the tests start
# their own throw-away server from them). Installs the package when missing and allowed.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing postgresql (Debian package) for the storage tests..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
else
  echo "PostgreSQL server binaries not found; install Debian's 'postgresql' package" >&2
  echo "(PostgreSQL tests will be skipped outside CI)" >&2
fi
