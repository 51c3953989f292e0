#!/usr/bin/env bash
# The README's quickstart on a machine that has nothing: build a clean Debian bookworm root
# filesystem (debootstrap, minbase plus git, the tool that brought the repository), clone this
# repository's HEAD into it, and run the README's two commands inside as root, printing how
# long each took and whether it passed.
#
#   sudo bash deploy/fresh-machine-check.sh              # both commands
#   sudo bash deploy/fresh-machine-check.sh --demo-only  # setup and the demo, not the tests
#
# FRESH_ROOT (default /var/tmp/saga-fresh-rootfs) is wiped and rebuilt; the logs are written
# next to it (FRESH_ROOT.logs/). The commands run in network, PID, IPC and UTS namespaces of
# their own: the root filesystem's PostgreSQL and RabbitMQ listen on their own 127.0.0.1, never
# collide with the host's servers on 5432/5672, and die with the namespace. slirp4netns gives
# the namespace outbound access (apt-get, pip) but no path to the host's loopback.
set -euo pipefail
REPO=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
ROOT=$(realpath -m "${FRESH_ROOT:-/var/tmp/saga-fresh-rootfs}")
LOGS=$ROOT.logs
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEMO_ONLY=0
[ "${1:-}" = --demo-only ] && DEMO_ONLY=1

[ "$(id -u)" -eq 0 ] || { echo "error: run as root (debootstrap, chroot, namespaces)" >&2; exit 1; }
for tool in debootstrap slirp4netns unshare; do
  command -v "$tool" >/dev/null || {
    echo "error: $tool missing: apt-get install -y debootstrap slirp4netns" >&2; exit 1; }
done
case $ROOT in /|/var|/var/tmp|/tmp|/work|"$REPO"*) echo "error: FRESH_ROOT=$ROOT" >&2; exit 1 ;; esac
if findmnt -rn -o TARGET | grep -q "^$ROOT/"; then
  echo "error: something is mounted under $ROOT; unmount it first" >&2; exit 1
fi

slirp=
cleanup() {  # the namespace's mounts go with it; this catches any that outlived it
  if [ -n "$slirp" ]; then kill "$slirp" 2>/dev/null || true; fi
  findmnt -rn -o TARGET | grep "^$ROOT/" | sort -r | xargs -r -n1 umount -l || true
}
trap cleanup EXIT

clock() { date +%s; }
took() { local s=$(($(clock) - $1)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

echo "== building a clean Debian bookworm in $ROOT"
rm -rf "$ROOT" "$LOGS"
mkdir -p "$ROOT" "$LOGS"
start=$(clock)
debootstrap --variant=minbase --include=ca-certificates,git bookworm "$ROOT" "$MIRROR" \
  >"$LOGS/debootstrap.log" 2>&1 || { tail -n 20 "$LOGS/debootstrap.log"; exit 1; }
echo "debootstrap: $(took "$start")"

cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
printf 'nameserver 10.0.2.3\n' >"$ROOT/etc/resolv.conf"  # slirp4netns's DNS forwarder
printf 'fresh\n' >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost fresh\n::1 localhost\n' >"$ROOT/etc/hosts"
# A host behind a TLS-intercepting proxy trusts extra certificate authorities: so must the
# root filesystem, and pip and npm with it (they carry their own lists otherwise).
tls_env=()
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  chroot "$ROOT" update-ca-certificates >"$LOGS/update-ca-certificates.log" 2>&1
  bundle=/etc/ssl/certs/ca-certificates.crt
  tls_env=("PIP_CERT=$bundle" "SSL_CERT_FILE=$bundle" "NODE_EXTRA_CA_CERTS=$bundle")
fi
git clone -q --no-local "$REPO" "$ROOT/root/saga"
echo "cloned $(git -C "$ROOT/root/saga" log -1 --format='%h %s' | cut -c1-80)"

# Inside the namespaces: wait for slirp4netns's interface, mount what the root filesystem
# needs (proc of the new PID namespace, sysfs of the new network namespace, a /dev/shm of its
# own), then run the commands, each timed, in a clean environment.
cat >"$LOGS/inside.sh" <<'EOF'
set -u
ROOT=$1 LOGS=$2 DEMO_ONLY=$3; shift 3
ip link set lo up
for _ in $(seq 1 100); do ip -4 addr show tap0 2>/dev/null | grep -q inet && break; sleep 0.1; done
ip -4 addr show tap0 | grep -q inet || { echo "error: no network in the namespace" >&2; exit 1; }
hostname fresh
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
mount -t tmpfs -o mode=1777 shm "$ROOT/dev/shm"
trap 'for m in dev/shm dev/pts dev sys proc; do umount -l "$ROOT/$m"; done' EXIT
run() {  # run <name> <command>: inside the root filesystem, in /root/saga, logged and timed
  local name=$1 start; shift; start=$(date +%s)
  chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb "$@" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "cd /root/saga && $CMD" >"$LOGS/$name.log" 2>&1
  local rc=$? s=$(($(date +%s) - start))
  printf '%-28s %s  %dm%02ds  (log: %s)\n' "$CMD" "$([ $rc -eq 0 ] && echo PASS || echo "FAIL ($rc)")" \
    $((s / 60)) $((s % 60)) "$LOGS/$name.log"
  return $rc
}
status=0
if CMD="bash deploy/setup-local.sh" run setup "$@"; then
  CMD=".venv/bin/saga demo" run demo "$@" || status=1
  if [ "$DEMO_ONLY" = 0 ]; then CMD=".venv/bin/pytest" run tests "$@" || status=1; fi
else
  status=1
fi
exit $status
EOF

echo "== the README's commands, as root in the root filesystem (namespaced network)"
unshare --net --pid --ipc --uts --mount --fork \
  bash "$LOGS/inside.sh" "$ROOT" "$LOGS" "$DEMO_ONLY" "${tls_env[@]}" &
inside=$!
# slirp4netns joins the namespace of the pid it is given: only once unshare has made it, or it
# would configure the host's own network.
for _ in $(seq 1 100); do
  [ "$(readlink "/proc/$inside/ns/net")" != "$(readlink /proc/self/ns/net)" ] && break
  sleep 0.1
done
[ "$(readlink "/proc/$inside/ns/net")" != "$(readlink /proc/self/ns/net)" ] \
  || { echo "error: the network namespace did not appear" >&2; kill "$inside"; exit 1; }
slirp4netns --configure --mtu=65520 --disable-host-loopback "$inside" tap0 \
  >"$LOGS/slirp4netns.log" 2>&1 &
slirp=$!
status=0
wait "$inside" || status=$?
echo "== demo summary (tail of $LOGS/demo.log)"
tail -n 25 "$LOGS/demo.log" 2>/dev/null || true
if [ "$DEMO_ONLY" = 0 ]; then
  echo "== test summary (tail of $LOGS/tests.log)"
  tail -n 15 "$LOGS/tests.log" 2>/dev/null || true
fi
echo "== fresh-machine check: $([ "$status" -eq 0 ] && echo PASS || echo FAIL)"
exit "$status"
