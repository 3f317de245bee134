#!/usr/bin/env bash
# make wheels-repro: build the committed tree again in a fresh clone at another path, with its own cargo target
# directory, and compare every file of its dist/ with ours byte for byte. Reuses .cache/cross (toolchain inputs).
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

[ -z "$(git -C "$REPO" status --porcelain --untracked-files=normal)" ] ||
    die "the working tree has changes: commit them first (the clone builds the last commit, dist/ must too)"
tmp=$(mktemp -d /tmp/gridpilot-repro.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
git clone -q "$REPO" "$tmp/src"
log "building $(git -C "$tmp/src" rev-parse --short HEAD) again in $tmp/src"
CROSS_CACHE="$CACHE" CROSS_TARGET_DIR="$tmp/target" "$tmp/src/tools/cross/wheels.sh"

differ=0
for f in "$REPO"/dist/gridpilot-*; do
    name=$(basename "$f")
    if cmp -s "$f" "$tmp/src/dist/$name"; then
        echo "same      $name  $(sha256sum "$f" | cut -c1-16)"
    else
        echo "DIFFERENT $name"
        differ=1
    fi
done
if [ "$(cd "$tmp/src/dist" && echo gridpilot-*)" != "$(cd "$REPO/dist" && echo gridpilot-*)" ]; then
    echo "the two dist/ hold different files"
    differ=1
fi
[ "$differ" -eq 0 ] || die "the wheels are not reproducible"
echo "reproducible: every file of dist/ is byte-identical when built again elsewhere"
