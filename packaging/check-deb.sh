#!/bin/sh
# CI step: builds the static binary and the .deb, installs it with dpkg, checks what it
# installed (binary runs and is static, unit verifies, conffile, user), runs the
# installed binary on a scratch data dir until `spotd healthcheck` passes, then purges
# the package. Idempotent; installs what it needs (musl target, musl-tools) on the way.
# Needs root (dpkg -i); uses sudo when not root.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

BIN=$(./packaging/build-static.sh | tail -n 1)
DEB=$(./packaging/build-deb.sh "$BIN" | tail -n 1)
echo "check-deb: built $DEB ($(du -h "$DEB" | cut -f1)), binary $(du -h "$BIN" | cut -f1)"

dpkg-deb --info "$DEB" >/dev/null
$SUDO dpkg -i "$DEB"
# Twice: an upgrade in place must work too.
$SUDO dpkg -i "$DEB"

fail() { echo "check-deb: FAIL: $*" >&2; exit 1; }
[ -x /usr/bin/spotd ] || fail "/usr/bin/spotd missing"
file -L /usr/bin/spotd | grep -Eq "statically linked|static-pie linked" || fail "not static: $(file -L /usr/bin/spotd)"
/usr/bin/spotd --version | grep -q "^spotd " || fail "--version"
[ -f /usr/lib/systemd/system/spotd.service ] || fail "unit missing"
[ -f /usr/lib/sysusers.d/spotd.conf ] || fail "sysusers entry missing"
dpkg-query -W -f='${Conffiles}\n' spotd | grep -q "/etc/spotd/spotd.toml" || fail "spotd.toml is not a conffile"
getent passwd spotd >/dev/null || fail "user spotd not created"
if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze verify /usr/lib/systemd/system/spotd.service || fail "systemd-analyze verify"
fi

# The installed config must load: start the installed binary with it (sandbox mode, a
# scratch data dir, a free port) and wait for the healthcheck.
TMP=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$TMP"' EXIT
PID=""
/usr/bin/spotd serve --config /etc/spotd/spotd.toml --listen 127.0.0.1:0 --data-dir "$TMP" \
    >"$TMP/out" 2>"$TMP/log" &
PID=$!
i=0
until /usr/bin/spotd healthcheck --data-dir "$TMP" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 100 ] || { cat "$TMP/log" >&2; fail "installed spotd never became healthy"; }
    kill -0 "$PID" 2>/dev/null || { cat "$TMP/log" >&2; fail "installed spotd exited"; }
    sleep 0.2
done
/usr/bin/spotd healthcheck --data-dir "$TMP"
kill -TERM "$PID"
wait "$PID" || fail "spotd did not exit 0 on SIGTERM"
PID=""

$SUDO dpkg --purge spotd >/dev/null
[ ! -e /usr/bin/spotd ] || fail "purge left /usr/bin/spotd"
echo "check-deb: OK"
