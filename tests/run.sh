#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with only the Rust toolchain:
#   1. installs RabbitMQ (Debian's rabbitmq-server) and PostgreSQL (Debian's postgresql) if absent,
#   2. starts both on loopback and creates the `drover` role and database,
#   3. runs fmt, clippy and every test in the workspace,
#   4. fuzzes the running binary's HTTP API against its OpenAPI description (tests/schemathesis.sh).
# Idempotent: a second run reuses what the first one installed and started.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[tests/run.sh]\033[0m %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# ---- 1. packages -------------------------------------------------------------------------------
need=()
command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] || need+=(rabbitmq-server)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
# tests/dashboard.rs renders the dashboard in headless Chromium (/usr/bin/chromium).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # policy-rc.d 101: the packages must not try to start services through an init system we may
  # not have; this script starts them itself below.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

# ---- 2. PostgreSQL -----------------------------------------------------------------------------
PG_PORT=${DROVER_TEST_PG_PORT:-5432}
if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$ver main$"; then
    log "creating PostgreSQL $ver cluster"
    $SUDO pg_createcluster "$ver" main -p "$PG_PORT" >/dev/null
  fi
  log "starting PostgreSQL $ver"
  $SUDO pg_ctlcluster "$ver" main start
  for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.5; done
fi
pg_isready -h 127.0.0.1 -p "$PG_PORT" >/dev/null || { log "PostgreSQL did not come up"; exit 1; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then su postgres -c "$1"; else sudo -u postgres sh -c "$1"; fi; }
if ! PGPASSWORD=drover psql -q -h 127.0.0.1 -p "$PG_PORT" -U drover -d drover -c 'select 1' >/dev/null 2>&1; then
  log "creating role and database drover"
  as_postgres "psql -q -p $PG_PORT -c \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='drover') THEN CREATE ROLE drover LOGIN SUPERUSER PASSWORD 'drover'; END IF; END \\\$\\\$;\""
  as_postgres "psql -q -p $PG_PORT -tc \"SELECT 1 FROM pg_database WHERE datname='drover'\"" | grep -q 1 \
    || as_postgres "createdb -p $PG_PORT -O drover drover"
fi
export DROVER_TEST_DATABASE_URL=${DROVER_TEST_DATABASE_URL:-postgres://drover:drover@127.0.0.1:$PG_PORT/drover}

# ---- 3. RabbitMQ -------------------------------------------------------------------------------
if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  log "starting RabbitMQ"
  $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
  # RabbitMQ takes a few seconds to register its node; then await_startup blocks until the
  # broker itself is ready.
  for _ in $(seq 1 120); do
    rabbitmq-diagnostics -q ping >/dev/null 2>&1 && rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 && break
    sleep 1
  done
fi
rabbitmq-diagnostics -q check_running >/dev/null 2>&1 || { log "RabbitMQ did not come up"; exit 1; }
export DROVER_TEST_AMQP_URL=${DROVER_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

# ---- 4. the suite ------------------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test"
# The chaos test runs on its own afterwards, uncaptured, so that its figures (kills, faults,
# duplicates, time) are in the log of every run.
cargo test --workspace --locked -- --skip the_binary_under_chaos_loses_nothing_and_stays_up
log "the chaos test of the binary"
cargo test --locked --test chaos -- --nocapture
log "schemathesis against the running binary"
bash tests/schemathesis.sh
log "all green"
