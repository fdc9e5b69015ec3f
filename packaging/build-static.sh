#!/bin/sh
# Builds a fully static x86_64 Linux release binary of spotd (musl target) and prints
# its path as the last line of output.
#
# Installs what it needs when missing: the rustup musl target and musl-tools (musl-gcc,
# for the C parts of ring). Idempotent: a second run only rebuilds what changed.
# CC_x86_64_unknown_linux_musl must point at musl-gcc: without it ring's build looks for
# x86_64-linux-musl-gcc, which Debian does not ship.
#
# The build goes to $SPOTD_STATIC_TARGET_DIR (default target/static) so it does not
# hold the lock on the debug target directory while it runs.
set -eu

TARGET=x86_64-unknown-linux-musl
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${SPOTD_STATIC_TARGET_DIR:-$ROOT/target/static}

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    echo "build-static: adding rust target $TARGET" >&2
    rustup target add "$TARGET" >&2
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
    echo "build-static: installing musl-tools" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get install -y musl-tools >&2 || { $SUDO apt-get update >&2 && $SUDO apt-get install -y musl-tools >&2; }
fi

CC_x86_64_unknown_linux_musl=musl-gcc \
CARGO_TARGET_DIR="$TARGET_DIR" \
    cargo build --release --locked --target "$TARGET" --bin spotd >&2

BIN="$TARGET_DIR/$TARGET/release/spotd"
# Refuse to hand out a binary that would need the host's libc at run time.
if command -v file >/dev/null 2>&1; then
    case "$(file -L "$BIN")" in
        *"statically linked"*|*"static-pie linked"*) ;;
        *) echo "build-static: $BIN is not statically linked: $(file -L "$BIN")" >&2; exit 1 ;;
    esac
fi
echo "$BIN"
