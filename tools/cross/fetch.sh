#!/usr/bin/env bash
# Fetch what building or testing for a foreign architecture needs, into .cache/cross/ (reused on the next run):
#   fetch.sh ARCH std      Debian's libstd-rust-web-dev for ARCH, of the same release as the host's rustc-web,
#                          extracted into a private sysroot and checked against that rustc.
#   fetch.sh ARCH python   The emulated Python (python3.11:arm64 from bookworm, python3.13:riscv64 from trixie)
#                          with its library closure, extracted into a private root; plus pip's wheel to install with.
# Packages come through a private apt configuration (own sources, lists, state and architecture); the system's
# dpkg never learns of a foreign architecture. Exit status 77 (with a SKIP line) when riscv64 cannot be done
# because trixie and bookworm-security ship different rustc-web releases.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

arch=${1:?usage: fetch.sh ARCH std|python...}
shift
triple=$(triple_of "$arch")
debarch=$(debarch_of "$arch")
updated=0
update_once() { [ "$updated" -eq 1 ] || apt_update "$arch"; updated=1; }

fetch_std() {
    local stamp host_ver want why versions ver=""
    stamp="$CACHE/sysroot/$arch.stamp"
    host_ver=$(host_rustc_debian_version)
    want=$(upstream_version "$host_ver")
    if [ -f "$stamp" ] && [ -z "$(std_mismatch "$arch")" ]; then
        log "$triple std: cached ($(cat "$stamp")), built by the same rustc as $DEBIAN_RUSTC $host_ver"
        return 0
    fi
    update_once
    # Every version the private sources offer; the newest one from the host rustc's upstream release wins.
    versions=$(papt "$arch" apt-cache madison libstd-rust-web-dev | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort -u)
    for v in $versions; do
        [ "$(upstream_version "$v")" = "$want" ] || continue
        if [ -z "$ver" ] || dpkg --compare-versions "$v" gt "$ver"; then ver=$v; fi
    done
    if [ -z "$ver" ]; then
        local offered
        offered=${versions//$'\n'/ }
        if [ "$arch" = riscv64 ]; then
            skip "riscv64: trixie ships libstd-rust-web-dev ${offered:-<none>} for riscv64, but the compiler here is rustc-web $host_ver from bookworm-security; a riscv64 std must come from the same release ($want). trixie and bookworm-security have diverged: no riscv64 wheel and no riscv64 tests until they ship the same rustc-web release."
        fi
        die "$(suites_of "$arch") offer libstd-rust-web-dev ${offered:-<none>} for $debarch, none from the host's rustc-web release $want ($host_ver). Upgrade the host: apt-get install --only-upgrade rustc-web cargo-web libstd-rust-web-dev"
    fi
    log "$triple std: libstd-rust-web-dev $ver ($debarch) for rustc-web $host_ver"
    local deb
    deb=$(papt_download "$arch" "libstd-rust-web-dev=$ver")
    rm -rf "$CACHE/sysroot/$arch" "$stamp"
    mkdir -p "$CACHE/sysroot/$arch"
    dpkg-deb -x "$deb" "$CACHE/sysroot/$arch"
    why=$(std_mismatch "$arch")
    if [ -n "$why" ]; then
        [ "$arch" = riscv64 ] && skip "riscv64: trixie's libstd-rust-web-dev $ver and bookworm-security's rustc-web $host_ver carry the same version number but not the same build: $why"
        die "libstd-rust-web-dev $ver ($debarch) does not fit rustc-web $host_ver: $why"
    fi
    echo "libstd-rust-web-dev $ver $debarch" >"$stamp"
}

# Packages of the interpreter's closure that running it under qemu does not need (maintainer-script tools,
# data packages); everything else (libc6, libssl, libffi, zlib, ...) goes into the root.
NOT_NEEDED='dpkg|install-info|perl|perl-base|perl-modules-.*|libperl.*|debconf.*|tar|tzdata.*|mailcap|mime-support|media-types|sensible-utils|readline-common|coreutils|base-files'

fetch_python() {
    local py root stamp pkgs files f out
    py=$(python_of "$arch")
    root=$(pyroot_of "$arch")
    stamp="$root.stamp"
    if [ ! -f "$stamp" ] || [ ! -x "$root/usr/bin/$py" ]; then
        update_once
        pkgs=$(papt "$arch" apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
            --no-replaces --no-enhances "$py" | grep -v '^[ <]' | sort -u | grep -vxE "$NOT_NEEDED")
        log "$py ($debarch): $(echo "$pkgs" | wc -l) packages into $root"
        # shellcheck disable=SC2086
        files=$(papt_download "$arch" $pkgs)
        rm -rf "$root" "$stamp"
        for f in $files; do extract_deb "$f" "$root"; done
        out=$(qemu-"$arch" -L "$root" "$root/usr/bin/$py" -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])') ||
            die "the extracted $py does not start under qemu-$arch -L $root"
        [ "${out%% *}" = "$arch" ] || die "the extracted $py reports machine '${out%% *}', expected $arch"
        for f in $files; do basename "$f" .deb; done >"$stamp"
        log "$py ($debarch) runs under qemu-$arch: $out"
    else
        log "$py ($debarch): cached in $root"
    fi
    if ! compgen -G "$CACHE/pip/pip-$PIP_WHEEL_VERSION-*.whl" >/dev/null; then
        python3 -m pip download -q --no-deps --only-binary=:all: -d "$CACHE/pip" "pip==$PIP_WHEEL_VERSION"
    fi
}

mkdir -p "$CACHE"
for what in "$@"; do
    case $what in
        std) fetch_std ;;
        python) fetch_python ;;
        *) die "fetch.sh: unknown part '$what' (std, python)" ;;
    esac
done
