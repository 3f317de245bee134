#!/usr/bin/env bash
# make test-arch: for aarch64 and riscv64, under qemu-user,
#   1. the pure Rust core's unit tests (cargo test --no-default-features), cross-compiled by Debian's rustc-web
#      against the foreign std and linked by the cross gcc, run by `qemu-<arch> -L /usr/<gnu triple>`;
#   2. the arch's wheel from dist/ installed (by pip, run by the emulated Python itself, so the wheel's tags are
#      checked against that interpreter) into a scratch directory, and tools/cross/smoke.py run by that Python.
# The x86_64 wheel gets the same smoke test natively, for the sampler's cost next to the emulated one.
# TEST_ARCHES limits the architectures; ARCH_FIXTURES points at the captures (default ../shared/fixtures/arch,
# else tests/fixtures/arch).
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

ensure_host_packages
use_debian_toolchain

fixtures=${ARCH_FIXTURES:-}
if [ -z "$fixtures" ]; then
    for d in "$REPO/../shared/fixtures/arch" "$REPO/tests/fixtures/arch"; do
        [ -d "$d" ] && { fixtures=$(cd "$d" && pwd); break; }
    done
fi
[ -d "$fixtures" ] || die "no arch captures: set ARCH_FIXTURES (looked in ../shared/fixtures/arch and tests/fixtures/arch)"
log "captures: $fixtures"

version=$(crate_version)
wheel_of() {
    local w
    w=$(compgen -G "$REPO/dist/gridpilot-$version-cp39-abi3-manylinux*_$1.whl" | head -n1 || true)
    [ -n "$w" ] || die "no $1 wheel of $version in dist/: run make wheels first"
    echo "$w"
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
summary=()

# The smoke test's output, and its RESULT line into the summary.
smoke() {
    local arch=$1 out
    shift
    out=$(cd "$scratch" && "$@" "$REPO/tools/cross/smoke.py" --arch "$arch" --fixtures "$fixtures") ||
        { echo "$out" >&2; die "smoke test failed for $arch"; }
    echo "$out" | grep -v '^RESULT' >&2
    summary+=("$(echo "$out" | sed -n 's/^RESULT //p')")
}

read -r -a arches <<<"${TEST_ARCHES:-${FOREIGN_ARCHES[*]}}"
skipped=()
for arch in "${arches[@]}"; do
    triple=$(triple_of "$arch")
    gnu=$(gnu_prefix_of "$arch")
    rc=0
    "$REPO/tools/cross/fetch.sh" "$arch" std python || rc=$?
    if [ "$rc" -eq "$EXIT_SKIP" ]; then skipped+=("$arch"); continue; fi
    [ "$rc" -eq 0 ] || exit "$rc"

    log "cargo test --no-default-features --target $triple (qemu-$arch)"
    env_triple=$(echo "$triple" | tr 'a-z-' 'A-Z_')
    # --cfg qemu_user lets a test that cannot hold under qemu-user say so (#[cfg_attr(qemu_user, ignore = "why")]).
    env "CARGO_TARGET_${env_triple}_LINKER=$gnu-gcc" \
        "CARGO_TARGET_${env_triple}_RUNNER=qemu-$arch -L /usr/$gnu" \
        RUSTFLAGS="--sysroot=$(sysroot_of "$arch") --cfg qemu_user" \
        RUSTDOCFLAGS="--sysroot=$(sysroot_of "$arch") --cfg qemu_user" \
        "$DEBIAN_CARGO" test --quiet --no-default-features --target "$triple" --manifest-path "$REPO/Cargo.toml"

    py=$(python_of "$arch")
    root=$(pyroot_of "$arch")
    wheel=$(wheel_of "$arch")
    log "pip install $(basename "$wheel") with $py under qemu-$arch"
    site="$scratch/site-$arch"
    qemu-"$arch" -L "$root" "$root/usr/bin/$py" "$(compgen -G "$CACHE/pip/pip-$PIP_WHEEL_VERSION-*.whl")/pip" install \
        --quiet --no-deps --no-index --no-compile --disable-pip-version-check --root-user-action=ignore \
        --target "$site" "$wheel"
    smoke "$arch" env PYTHONPATH="$site" qemu-"$arch" -L "$root" "$root/usr/bin/$py"
done

log "native x86_64 smoke test (the sampler's cost without emulation)"
ensure_tools_venv
"$CACHE/venv/bin/python3" -m pip install --quiet --no-deps --no-index --no-compile --disable-pip-version-check \
    --root-user-action=ignore --target "$scratch/site-x86_64" "$(wheel_of x86_64)"
smoke x86_64 env PYTHONPATH="$scratch/site-x86_64" "$CACHE/venv/bin/python3"

echo "test-arch summary:"
for line in "${summary[@]}"; do echo "  $line"; done
if [ ${#skipped[@]} -gt 0 ]; then
    echo "SKIP: ${skipped[*]} not tested: trixie and bookworm-security ship different rustc-web releases (see above)"
fi
