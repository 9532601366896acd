#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with only the Rust toolchain:
#   1. installs RabbitMQ (Debian's rabbitmq-server) and PostgreSQL (Debian's postgresql) if absent,
#      and Chromium with its WebDriver (chromium, chromium-driver) for the console's tests,
#   2. generates a test CA with server and client certificates (openssl), starts both on loopback
#      with TLS beside plain TCP (RabbitMQ 5671, PostgreSQL ssl = on) and creates the `drover`
#      role and database,
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
# tests/dashboard.rs renders the dashboard in headless Chromium (/usr/bin/chromium);
# tests/console_ui.rs drives it through WebDriver (Debian's chromium-driver, the same build).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
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

# ---- 2. certificates ---------------------------------------------------------------------------
# A CA, a server certificate for 127.0.0.1 / localhost (RabbitMQ and PostgreSQL), a client
# certificate for mutual TLS, and a second CA with a client of its own (what must be refused).
# Test material only: the keys are readable by whoever runs the tests.
TLS_DIR=${DROVER_TEST_TLS_DIR:-/var/lib/drover-test-tls}
if [ ! -s "$TLS_DIR/client.key" ]; then
  log "generating test certificates in $TLS_DIR"
  $SUDO mkdir -p "$TLS_DIR"
  $SUDO chmod 755 "$TLS_DIR"
  tmp=$(mktemp -d)
  (
    cd "$tmp"
    ca() { openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$2" \
             -keyout "$1.key" -out "$1.crt" 2>/dev/null; }
    signed() { # name, CN, CA, extensions
      openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
      printf '%s\n' "$4" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA "$3.crt" -CAkey "$3.key" -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    }
    ca ca "drover test CA"
    ca other-ca "drover test other CA"
    signed server localhost ca "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
    signed client drover-client ca "extendedKeyUsage=clientAuth"
    signed other-client drover-other-client other-ca "extendedKeyUsage=clientAuth"
    rm -f ./*.csr ./*.ext ./*.srl
  )
  $SUDO cp "$tmp"/*.crt "$tmp"/client.key "$tmp"/other-client.key "$TLS_DIR"/
  # Each server reads its own copy of the server key, owned by it and private (PostgreSQL
  # refuses a key others can read).
  for who in rabbitmq postgres; do
    $SUDO cp "$tmp/server.key" "$TLS_DIR/$who-server.key"
    if id "$who" >/dev/null 2>&1; then $SUDO chown "$who" "$TLS_DIR/$who-server.key"; fi
    $SUDO chmod 600 "$TLS_DIR/$who-server.key"
  done
  $SUDO chmod 644 "$TLS_DIR"/*.crt "$TLS_DIR/client.key" "$TLS_DIR/other-client.key"
  rm -rf "$tmp"
fi
# The packages create their users: re-own the servers' keys if they came after the keys.
for who in rabbitmq postgres; do
  if id "$who" >/dev/null 2>&1; then $SUDO chown "$who" "$TLS_DIR/$who-server.key"; fi
done
export DROVER_TEST_TLS_DIR=$TLS_DIR

# ---- 3. PostgreSQL -----------------------------------------------------------------------------
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
# TLS beside plain connections on the same port, with the test CA's server certificate (Debian
# turns ssl on with a self-signed "snakeoil" one); ssl settings take effect at a reload.
pg_show() { PGPASSWORD=drover psql -qtA -h 127.0.0.1 -p "$PG_PORT" -U drover -d drover -c "show $1"; }
if [ "$(pg_show ssl_cert_file)" != "$TLS_DIR/server.crt" ] || [ "$(pg_show ssl)" != "on" ]; then
  log "enabling TLS on PostgreSQL"
  PGPASSWORD=drover psql -q -h 127.0.0.1 -p "$PG_PORT" -U drover -d drover \
    -c "ALTER SYSTEM SET ssl_cert_file = '$TLS_DIR/server.crt'" \
    -c "ALTER SYSTEM SET ssl_key_file = '$TLS_DIR/postgres-server.key'" \
    -c "ALTER SYSTEM SET ssl_ca_file = '$TLS_DIR/ca.crt'" \
    -c "ALTER SYSTEM SET ssl = on" \
    -c "SELECT pg_reload_conf()" >/dev/null
  for _ in $(seq 1 20); do
    [ "$(pg_show ssl_cert_file)" = "$TLS_DIR/server.crt" ] && break
    sleep 0.5
  done
fi
export DROVER_TEST_DATABASE_URL=${DROVER_TEST_DATABASE_URL:-postgres://drover:drover@127.0.0.1:$PG_PORT/drover}

# ---- 4. RabbitMQ -------------------------------------------------------------------------------
# A TLS listener on loopback beside the plain one, verifying a client certificate when one is
# presented (mutual TLS) without requiring it.
RABBIT_CONF=/etc/rabbitmq/rabbitmq.conf
if ! grep -q "drover tests: TLS" "$RABBIT_CONF" 2>/dev/null; then
  log "configuring a TLS listener for RabbitMQ in $RABBIT_CONF"
  $SUDO mkdir -p /etc/rabbitmq
  $SUDO tee -a "$RABBIT_CONF" >/dev/null <<EOF_CONF
# drover tests: TLS (tests/run.sh)
listeners.ssl.1 = 127.0.0.1:5671
ssl_options.cacertfile = $TLS_DIR/ca.crt
ssl_options.certfile = $TLS_DIR/server.crt
ssl_options.keyfile = $TLS_DIR/rabbitmq-server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
EOF_CONF
  if rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    log "restarting RabbitMQ for its TLS listener"
    $SUDO rabbitmqctl -q stop >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do rabbitmq-diagnostics -q ping >/dev/null 2>&1 || break; sleep 1; done
  fi
fi
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
export DROVER_TEST_AMQPS_URL=${DROVER_TEST_AMQPS_URL:-amqps://guest:guest@127.0.0.1:5671/%2f}

# ---- 5. the suite ------------------------------------------------------------------------------
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
