#!/usr/bin/env bash
# make wheels: the sdist and one abi3 wheel per architecture (x86_64, aarch64, riscv64) into dist/, built by
# Debian's rustc-web with zig as the linker (manylinux2014; manylinux_2_31 for riscv64), reproducibly:
# SOURCE_DATE_EPOCH is the last commit's time, tools are pinned, paths are remapped.
# WHEEL_ARCHES limits the architectures (default: all three).
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

ensure_host_packages
use_debian_toolchain

ensure_tools_venv
export PATH="$CACHE/venv/bin:$PATH"

SOURCE_DATE_EPOCH=$(source_date_epoch)
export SOURCE_DATE_EPOCH
version=$(crate_version)
dist="$REPO/dist"
mkdir -p "$dist"
rm -f "$dist"/gridpilot-"$version"[-.]*
cd "$REPO"

# maturin's output goes to a log per step, shown when the step fails.
run_logged() {
    local name=$1
    shift
    if ! "$@" >"$CACHE/$name.log" 2>&1; then
        tail -n 40 "$CACHE/$name.log" >&2
        die "$name failed (full log: $CACHE/$name.log)"
    fi
}

log "sdist (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
run_logged sdist maturin sdist --out "$dist"

read -r -a arches <<<"${WHEEL_ARCHES:-x86_64 ${FOREIGN_ARCHES[*]}}"
skipped=()
for arch in "${arches[@]}"; do
    triple=$(triple_of "$arch")
    flags=$(remap_flags)
    if [ "$arch" != x86_64 ]; then
        rc=0
        "$REPO/tools/cross/fetch.sh" "$arch" std || rc=$?
        if [ "$rc" -eq "$EXIT_SKIP" ]; then skipped+=("$arch"); continue; fi
        [ "$rc" -eq 0 ] || exit "$rc"
        flags="$flags --sysroot=$(sysroot_of "$arch")"
    fi
    log "wheel $arch ($triple, $(manylinux_of "$arch"))"
    # With --target, RUSTFLAGS reach only the target's crates, not build scripts run on the host.
    RUSTFLAGS="$flags" run_logged "wheel-$arch" maturin build --release --strip --zig --target "$triple" \
        --compatibility "$(manylinux_of "$arch")" --out "$dist"
    wheel=$(compgen -G "$dist/gridpilot-$version-cp39-abi3-*_${arch}.whl" | head -n1 || true)
    [ -n "$wheel" ] || die "no $arch wheel in $dist"
    # maturin's SBOM names the crate by its absolute checkout path: neutralise it, as the binary's paths are.
    python3 "$REPO/tools/cross/normalize_wheel.py" "$wheel"
done

log "dist/:"
(cd "$dist" && for f in gridpilot-"$version"[-.]*; do
    printf '  %-60s %8s bytes  sha256 %s\n' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)"
done) >&2
if [ ${#skipped[@]} -gt 0 ]; then
    echo "SKIP: no wheel for ${skipped[*]} (reason above)" >&2
fi
