#!/bin/sh
# Installs what the benchmark needs when it is missing: restic (Debian),
# GNU time, and borg 1.4 from PyPI in its own virtualenv (benchmarks/work/borg-venv).
# PyPI has no Linux wheel for borg 1.4, so pip builds it from the sdist; that needs
# the C headers below. If that fails, Debian's borgbackup (1.2) is the fallback;
# run.py records which borg binary and version it used.
set -eu
cd "$(dirname "$0")"
VENV=work/borg-venv
BUILD_DEPS="python3-venv python3-dev build-essential pkg-config libacl1-dev libssl-dev liblz4-dev libzstd-dev libxxhash-dev"
updated=0

apt_install() {
    if [ "$(id -u)" != 0 ]; then echo "install as root: apt-get install -y $*" >&2; return 1; fi
    if [ "$updated" = 0 ]; then apt-get update -qq; updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v restic >/dev/null || apt_install restic
[ -x /usr/bin/time ] || apt_install time

if [ ! -x "$VENV/bin/borg" ]; then
    mkdir -p work
    python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv && rm -rf "$VENV" && python3 -m venv "$VENV"; }
    if ! "$VENV/bin/pip" install -q "borgbackup>=1.4,<1.5" 2>/dev/null; then
        echo "borg 1.4: no wheel; installing build dependencies and building from source" >&2
        apt_install $BUILD_DEPS || true
        "$VENV/bin/pip" install -q "borgbackup>=1.4,<1.5" || {
            echo "borg 1.4 from PyPI failed; falling back to Debian borgbackup" >&2
            rm -rf "$VENV"
            command -v borg >/dev/null || apt_install borgbackup
        }
    fi
fi

echo "restic: $(restic version)"
if [ -x "$VENV/bin/borg" ]; then echo "borg:   $("$VENV/bin/borg" --version) ($VENV)"; else echo "borg:   $(borg --version) ($(command -v borg))"; fi
