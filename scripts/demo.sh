#!/usr/bin/env bash
# A two-minute disaster-recovery story with the resurgo CLI:
# create the default repository, back up a sample tree, destroy the tree,
# restore it, prove the restore is byte-identical, and check the repository.
#
# Everything happens under a fresh temporary HOME, so the default repository
# location ($HOME/.local/share/resurgo/repository) is used without touching
# yours. Set KEEP=1 to keep the temporary directory afterwards.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

./scripts/setup.sh

RESURGO="$ROOT/.venv/bin/resurgo"
DEMO=$(mktemp -d "${TMPDIR:-/tmp}/resurgo-demo.XXXXXX")
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    printf '\n(kept %s)\n' "$DEMO"
  else
    rm -rf "$DEMO"
  fi
}
trap cleanup EXIT

# A clean, private environment: only the embedded defaults apply.
export HOME="$DEMO/home"
mkdir -p "$HOME"
unset XDG_DATA_HOME XDG_CACHE_HOME XDG_CONFIG_HOME RESURGO_REPOSITORY \
  RESURGO_PASSWORD RESURGO_PASSWORD_COMMAND RESURGO_TEST_FAULTS RESURGO_TEST_WEAK_KDF
export RESURGO_PASSWORD_FILE="$DEMO/password"
head -c 24 /dev/urandom | base64 >"$RESURGO_PASSWORD_FILE"
chmod 600 "$RESURGO_PASSWORD_FILE"

step=0
if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD='' PLAIN=''; fi
say() {
  step=$((step + 1))
  printf '\n%s[%d] %s%s\n' "$BOLD" "$step" "$*" "$PLAIN"
}
trap 'printf "\n%sdemo FAILED at step %d%s\n" "$BOLD" "$step" "$PLAIN" >&2' ERR
run() {
  printf '$ %s\n' "$*"
  "$@"
}

say "A fresh machine: HOME=$HOME, password in \$RESURGO_PASSWORD_FILE"
SAMPLE="$DEMO/projects"
mkdir -p "$SAMPLE/docs/notes" "$SAMPLE/src" "$SAMPLE/data" "$SAMPLE/empty-dir"
printf 'Quarterly report\n\nAll figures are in data/.\n' >"$SAMPLE/docs/report.txt"
for i in $(seq 1 20); do
  printf 'note %d: %s\n' "$i" "$(date -u +%FT%TZ)" >"$SAMPLE/docs/notes/note-$i.txt"
done
printf '#!/bin/sh\necho "hello from a restored script"\n' >"$SAMPLE/src/hello.sh"
chmod 755 "$SAMPLE/src/hello.sh"
head -c $((6 * 1024 * 1024)) /dev/urandom >"$SAMPLE/data/measurements.bin"
cp "$SAMPLE/data/measurements.bin" "$SAMPLE/data/measurements-copy.bin" # deduplicated
ln -s ../docs/report.txt "$SAMPLE/src/report-link"
PRISTINE="$DEMO/pristine"
cp -a "$SAMPLE" "$PRISTINE"
printf 'sample tree: %s (%s files, %s)\n' "$SAMPLE" \
  "$(find "$SAMPLE" -type f | wc -l)" "$(du -sh "$SAMPLE" | cut -f1)"

say "Create the repository at the default location"
run "$RESURGO" init
REPO_DIR="$HOME/.local/share/resurgo/repository"
test -f "$REPO_DIR/config"

say "Back up the sample tree"
run "$RESURGO" backup "$SAMPLE"

say "List the snapshots"
run "$RESURGO" snapshots

say "Disaster: the tree is destroyed"
run rm -rf "$SAMPLE"
test ! -e "$SAMPLE"

say "Restore the latest snapshot"
TARGET="$DEMO/restore"
run "$RESURGO" restore latest --target "$TARGET"
# The restored tree sits either at its absolute path under the target, or
# directly under it; accept both layouts.
if [ -d "$TARGET$SAMPLE" ]; then
  RESTORED="$TARGET$SAMPLE"
elif [ -d "$TARGET/$(basename "$SAMPLE")" ]; then
  RESTORED="$TARGET/$(basename "$SAMPLE")"
else
  RESTORED="$TARGET"
fi

printf 'restored tree: %s\n' "$RESTORED"

# Type, permissions, size and modification time of every entry (symlinks: their target).
listing() {
  (cd "$1" && find . -printf '%y %m %s %TY-%Tm-%Td %TH:%TM:%.2TS %p -> %l\n' | sed 's/ -> $//' | sort)
}

say "Verify: the restored tree is identical to a copy taken before the disaster"
run diff -r --no-dereference "$PRISTINE" "$RESTORED"
echo "contents: no differences"
diff <(listing "$PRISTINE") <(listing "$RESTORED")
echo "types, permissions, sizes, modification times, symlink targets: no differences"
printf 'running the restored script: '
"$RESTORED/src/hello.sh"

say "Check the repository, reading every byte of data"
run "$RESURGO" check --read-data

printf '\n%sDemo complete.%s A repository was created at the default location, the\n' "$BOLD" "$PLAIN"
printf 'tree was backed up, destroyed, restored from the repository and compared\n'
printf 'byte for byte, with its metadata, with a copy taken before the disaster.\n'
