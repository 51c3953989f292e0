#!/usr/bin/env bash
# Prepare this machine for the engine: install what is missing (through apt-get, when run as
# root), make sure PostgreSQL and RabbitMQ answer on 127.0.0.1 the way the default URLs connect
# (user postgres without a password, guest/guest), create .venv and install the project with
# its dev extras. Safe to run again; quick and quiet when everything is there already.
set -euo pipefail
cd "$(dirname "$0")/.."

wait_for() {  # wait_for <what> <command...>: poll with a deadline instead of sleeping blindly
  local what=$1; shift
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "error: $what did not come up within 60s" >&2; return 1
}

# The servers' commands live in sbin, which a non-root PATH on Debian lacks.
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
can_install() { [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; }
pg_answers() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
pg_cluster() { ls -d /etc/postgresql/*/main 2>/dev/null | head -n1; }  # e.g. /etc/postgresql/15/main
rabbit_answers() { timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672' 2>/dev/null; }
python_ok() { "$1" -c 'import sys, ensurepip, venv; assert sys.version_info >= (3, 11)' 2>/dev/null; }
PY=${PYTHON:-python3.11}
python_ok "$PY" || PY=python3

# What is missing: the servers and Python are needed; the rest only by some tests (the
# dashboard's browser tests, the Node.js participant, the TLS tests' certificates, pgrep,
# libfaketime for the clock-skew test).
needed=() optional=()
pg_answers || [ -n "$(pg_cluster)" ] || needed+=(postgresql)
rabbit_answers || command -v rabbitmq-server >/dev/null || needed+=(rabbitmq-server)
[ -x .venv/bin/python ] || python_ok "$PY" || needed+=(python3 python3-venv)
command -v chromium >/dev/null && command -v chromedriver >/dev/null \
  || optional+=(chromium chromium-driver)
command -v node >/dev/null && command -v npm >/dev/null || optional+=(nodejs npm)
command -v openssl >/dev/null || optional+=(openssl)
command -v pgrep >/dev/null || optional+=(procps)  # the bench's CPU meter
compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null || optional+=(faketime)
packages=("${needed[@]}" "${optional[@]}")
if [ ${#packages[@]} -gt 0 ]; then
  if can_install; then
    echo "installing ${packages[*]} ..."
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  elif [ ${#needed[@]} -gt 0 ]; then
    echo "error: ${needed[*]} missing. Run this script as root to install them, or run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${packages[*]}" >&2
    exit 1
  else
    echo "note: some tests need ${optional[*]}:" \
      "sudo apt-get install -y ${optional[*]}" >&2
  fi
fi
python_ok "$PY" || PY=python3
# The example participant in Node.js (examples/node-inventory) and its end-to-end test: its
# packages come from the committed package-lock.json.
if command -v npm >/dev/null 2>&1; then
  (cd examples/node-inventory && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

if ! pg_answers; then
  echo "starting PostgreSQL ..."
  cluster=$(pg_cluster)
  pg_ctlcluster --skip-systemctl-redirect "$(basename "$(dirname "$cluster")")" main start
  wait_for PostgreSQL pg_isready -h 127.0.0.1 -p 5432 -q
fi
# The default URLs connect over TCP as postgres without a password, which a fresh Debian
# cluster refuses (scram-sha-256 on 127.0.0.1): trust loopback TCP, as local sockets are.
pg_connects() { psql -h 127.0.0.1 -U postgres -d postgres -w -qAtc 'select 1' >/dev/null 2>&1; }
if command -v psql >/dev/null && ! pg_connects; then
  cluster=$(pg_cluster)
  trust="host all all 127.0.0.1/32 trust"$'\n'"host all all ::1/128 trust"
  if [ "$(id -u)" -ne 0 ] || [ -z "$cluster" ]; then
    echo "error: PostgreSQL refuses postgres@127.0.0.1 without a password. As root, put" >&2
    echo "these lines first in pg_hba.conf, then reload (pg_ctlcluster <version> main reload):" >&2
    echo "$trust" >&2
    exit 1
  fi
  echo "PostgreSQL: trusting connections over 127.0.0.1 and ::1 ($cluster/pg_hba.conf) ..."
  hba=$(printf '# deploy/setup-local.sh: the default URLs connect as postgres without a password\n%s\n' "$trust"; cat "$cluster/pg_hba.conf")
  printf '%s\n' "$hba" >"$cluster/pg_hba.conf"
  pg_ctlcluster --skip-systemctl-redirect "$(basename "$(dirname "$cluster")")" main reload
  wait_for "PostgreSQL's trust for 127.0.0.1" pg_connects
fi
if ! rabbit_answers; then
  echo "starting RabbitMQ ..."
  rabbitmq-server -detached || true
  wait_for RabbitMQ rabbit_answers
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "setup done: .venv ready, PostgreSQL and RabbitMQ answering"
