#!/usr/bin/env bash
# Services the leaderboard tests need on a fresh Debian machine (run as root; idempotent, quick when done):
#   - PostgreSQL from Debian's packages, listening on 127.0.0.1:5432, with user/database `speedrun_test`;
#   - Debian's chromium + chromium-driver for the page tests (selenium drives the system browser);
#   - bubblewrap (bwrap) for the sandbox that re-runs submissions (tests/test_sandbox.py).
# It prints the DATABASE_URL to export so the PostgreSQL tests run instead of skipping:
#   eval "$(bash scripts/ci_services.sh)"    # sets LEADERBOARD_TEST_DATABASE_URL
# Everything else goes to stderr. Set CI_SERVICES_SKIP_CHROMIUM=1 to leave the browser out.
set -euo pipefail

PG_USER=speedrun_test
PG_PASSWORD=speedrun_test
PG_DB=speedrun_test
log() { echo "ci_services: $*" >&2; }

need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v pg_ctlcluster >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
if [ "${CI_SERVICES_SKIP_CHROMIUM:-0}" != 1 ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then log "need root to apt-get install ${need[*]}"; exit 1; fi
  log "installing ${need[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q .; then
  log "creating PostgreSQL $version cluster"
  pg_createcluster "$version" main >&2
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
  log "starting PostgreSQL $version on 127.0.0.1:5432"
  pg_ctlcluster "$version" main start -o "-c listen_addresses=127.0.0.1 -c port=5432" >&2
fi
for _ in $(seq 1 30); do
  su postgres -c "pg_isready -q -h 127.0.0.1 -p 5432" && break
  sleep 0.5
done
psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -qtA -p 5432 $*"; }  # peer auth over the socket
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname='$PG_USER'\"")" != 1 ]; then
  psql_admin "-c \"CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD' CREATEDB\"" >&2
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname='$PG_DB'\"")" != 1 ]; then
  psql_admin "-c \"CREATE DATABASE $PG_DB OWNER $PG_USER\"" >&2
fi
echo "export LEADERBOARD_TEST_DATABASE_URL=postgresql+psycopg://$PG_USER:$PG_PASSWORD@127.0.0.1:5432/$PG_DB"
