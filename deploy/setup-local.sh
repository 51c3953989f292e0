#!/usr/bin/env bash
# Prepare this machine for the engine: make sure PostgreSQL and RabbitMQ answer on 127.0.0.1,
# create .venv and install the project with its dev extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

wait_for() {  # wait_for <what> <command...>: poll with a deadline instead of sleeping blindly
  local what=$1; shift
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "error: $what did not come up within 60s" >&2; return 1
}

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "starting PostgreSQL ..."
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  wait_for PostgreSQL pg_isready -h 127.0.0.1 -p 5432 -q
fi
if ! rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; then
  echo "starting RabbitMQ ..."
  rabbitmq-server -detached || true
  wait_for RabbitMQ rabbitmq-diagnostics -q check_port_connectivity
fi

# The dashboard's browser tests drive Debian's Chromium, headless, through chromedriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium and chromium-driver ..."
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: the dashboard's browser tests need Chromium:" \
      "sudo apt-get install -y chromium chromium-driver" >&2
  fi
fi

# The example participant in Node.js (examples/node-inventory) and its end-to-end test need node
# and npm; its packages come from the committed package-lock.json.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing nodejs and npm ..."
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "note: the Node.js example participant needs node and npm:" \
      "sudo apt-get install -y nodejs npm" >&2
  fi
fi
if command -v npm >/dev/null 2>&1; then
  (cd examples/node-inventory && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "setup done: .venv ready, PostgreSQL and RabbitMQ answering"
