#!/bin/sh
# Builds the spotd Debian package with dpkg-deb (no download, no debhelper) and prints
# the .deb's path as the last line.
#
# Usage: packaging/build-deb.sh [STATIC_BINARY]
# Without an argument it runs packaging/build-static.sh first (incremental). The package
# holds the static binary, the systemd unit, the sysusers entry, the configuration as a
# conffile (/etc/spotd/spotd.toml: the commented example with the real-provider sections
# commented out, so a fresh install starts in sandbox mode) and the docs.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${1:-}
if [ -z "$BIN" ]; then
    BIN=$(./packaging/build-static.sh | tail -n 1)
fi
[ -x "$BIN" ] || { echo "build-deb: $BIN is not an executable" >&2; exit 1; }

VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
ARCH=amd64
OUT=${SPOTD_DEB_OUT:-$ROOT/target/deb}
STAGE=$OUT/spotd_${VERSION}_${ARCH}
DEB=$OUT/spotd_${VERSION}_${ARCH}.deb
rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN" "$STAGE/usr/bin" "$STAGE/usr/lib/systemd/system" \
    "$STAGE/usr/lib/sysusers.d" "$STAGE/etc/spotd" "$STAGE/usr/share/doc/spotd"

install -m 0755 "$BIN" "$STAGE/usr/bin/spotd"
install -m 0644 packaging/spotd.service "$STAGE/usr/lib/systemd/system/spotd.service"
install -m 0644 packaging/spotd.sysusers "$STAGE/usr/lib/sysusers.d/spotd.conf"
install -m 0644 packaging/spotd.toml "$STAGE/usr/share/doc/spotd/spotd.toml.example"
install -m 0644 README.md "$STAGE/usr/share/doc/spotd/README.md"
# The installed config: every key of the example, but the example providers, upstreams
# and models commented out: a fresh install must not call 10.0.0.5 or a paid API.
"$BIN" config default --install > "$STAGE/etc/spotd/spotd.toml"
chmod 0644 "$STAGE/etc/spotd/spotd.toml"
cat > "$STAGE/usr/share/doc/spotd/copyright" <<'COPY'
spotd is licensed under MIT OR Apache-2.0.
COPY

SIZE=$(du -sk "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<CTL
Package: spotd
Version: $VERSION
Architecture: $ARCH
Maintainer: spotd maintainers <spotd@localhost>
Installed-Size: $SIZE
Section: net
Priority: optional
Depends: systemd | systemd-standalone-sysusers | adduser
Homepage: file:/usr/share/doc/spotd/README.md
Description: self-hosted GPU spot marketplace
 spotd aggregates spot GPU offers from several providers, rents a GPU in one
 API call, bills per second against prepaid credit and routes OpenAI-compatible
 inference requests. One static binary; runs as a hardened systemd service.
CTL
echo /etc/spotd/spotd.toml > "$STAGE/DEBIAN/conffiles"

cat > "$STAGE/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers spotd.conf
    elif ! getent passwd spotd >/dev/null; then
        adduser --system --group --home /var/lib/spotd --no-create-home spotd
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        # An upgrade restarts a running service; a first install waits for
        # `systemctl enable --now spotd`.
        if systemctl is-active --quiet spotd; then systemctl restart spotd || true; fi
    fi
fi
exit 0
SH
cat > "$STAGE/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop spotd || true
    systemctl disable spotd >/dev/null 2>&1 || true
fi
exit 0
SH
cat > "$STAGE/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
if [ "$1" = purge ] && [ -d /var/lib/spotd ]; then
    # The database holds the ledger: purging the package does not delete money records.
    echo "spotd: /var/lib/spotd (database, admin token) was kept; delete it by hand if unneeded" >&2
fi
exit 0
SH
chmod 0755 "$STAGE/DEBIAN/postinst" "$STAGE/DEBIAN/prerm" "$STAGE/DEBIAN/postrm"

dpkg-deb --root-owner-group --build "$STAGE" "$DEB" >&2
echo "$DEB"
