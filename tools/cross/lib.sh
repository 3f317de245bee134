# Shared by tools/cross/*.sh (sourced, not run): the architecture table, the cache layout, the host packages,
# the Debian toolchain, and the private apt configuration that fetches foreign packages without touching dpkg.
# shellcheck shell=bash

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${CROSS_CACHE:-$REPO/.cache/cross}
# Cargo output of the cross builds: apart from target/ so rustup's rustc (make test) and Debian's do not
# invalidate each other's build scripts on every switch.
CROSS_TARGET_DIR=${CROSS_TARGET_DIR:-$REPO/target/cross}
FOREIGN_ARCHES=(aarch64 riscv64)

# Pinned so that two builds of one commit give the same bytes.
MATURIN_VERSION=1.16.0
ZIGLANG_VERSION=0.15.2
# The pip (run from its wheel) that installs each wheel into the emulated Pythons (fetch.sh, test-arch.sh).
# shellcheck disable=SC2034
PIP_WHEEL_VERSION=26.3

# Debian's rustc-web: the one rustc here whose std also exists for arm64 and riscv64 (rustup has x86_64 only).
DEBIAN_RUSTC=/usr/bin/rustc
DEBIAN_CARGO=/usr/bin/cargo
DEBIAN_RUSTDOC=/usr/bin/rustdoc
# Host packages, installed when missing. libc6-dev-*-cross hold the cross libc the test binaries link against
# and qemu-user runs them with (-L); the foreign libc never goes into the system's dpkg (libc6:arm64 next to
# the cross libc makes every thread creation spin under qemu).
HOST_PACKAGES=(rustc-web cargo-web libstd-rust-web-dev qemu-user
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-riscv64-linux-gnu libc6-dev-riscv64-cross)

# Exit status of a step that stops for a reason CI may accept (riscv64 when trixie and bookworm-security
# ship different rustc-web releases). Automake's "skipped" code.
EXIT_SKIP=77

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
skip() { printf 'SKIP: %s\n' "$*" >&2; exit "$EXIT_SKIP"; }

triple_of() {
    case $1 in
        x86_64) echo x86_64-unknown-linux-gnu ;;
        aarch64) echo aarch64-unknown-linux-gnu ;;
        riscv64) echo riscv64gc-unknown-linux-gnu ;;
        *) die "unknown architecture '$1' (known: x86_64 ${FOREIGN_ARCHES[*]})" ;;
    esac
}
debarch_of() { case $1 in x86_64) echo amd64 ;; aarch64) echo arm64 ;; *) echo "$1" ;; esac; }
# manylinux2014 (glibc 2.17) where Rust's std allows it; riscv64 std needs glibc 2.31 (manylinux_2_31).
manylinux_of() { case $1 in riscv64) echo manylinux_2_31 ;; *) echo manylinux2014 ;; esac; }
# The Debian suites the foreign std and the emulated Python come from, and that Python.
suites_of() { case $1 in aarch64) echo "bookworm bookworm-security" ;; riscv64) echo "trixie trixie-security" ;; esac; }
python_of() { case $1 in aarch64) echo python3.11 ;; riscv64) echo python3.13 ;; esac; }
gnu_prefix_of() { case $1 in aarch64) echo aarch64-linux-gnu ;; riscv64) echo riscv64-linux-gnu ;; esac; }

# The foreign std is extracted into $CACHE/sysroot/<arch>; rustc's --sysroot is its usr/ (lib/rustlib/<triple>).
sysroot_of() { echo "$CACHE/sysroot/$1/usr"; }
pyroot_of() { echo "$CACHE/pyroot/$1"; }    # private root of the emulated Python (merged /usr)

# The upstream part of a Debian version: 1.96.0+dfsg1-1~deb12u2 -> 1.96.0+dfsg1.
upstream_version() { local v=${1#*:}; echo "${v%-*}"; }

ensure_host_packages() {
    local missing=() p
    for p in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing host packages (install them as root): ${missing[*]}"
    log "installing host packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

# maturin and zig (ziglang from PyPI) in a venv of their own in the cache; its python3 is also a clean
# interpreter (no gridpilot installed) for the native smoke test.
ensure_tools_venv() {
    local venv="$CACHE/venv" pins=("maturin==$MATURIN_VERSION" "ziglang==$ZIGLANG_VERSION")
    [ "$(cat "$venv/.pins" 2>/dev/null)" = "${pins[*]}" ] && return 0
    log "tools venv: ${pins[*]}"
    rm -rf "$venv"
    python3 -m venv "$venv"
    PIP_CACHE_DIR="$CACHE/pip-cache" "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}"
    echo "${pins[*]}" >"$venv/.pins"
}

host_rustc_debian_version() { dpkg-query -W -f='${Version}' rustc-web; }

# Run cargo and rustc from Debian's rustc-web, whatever rustup puts first on PATH.
use_debian_toolchain() {
    mkdir -p "$CACHE/bin"
    ln -sfn "$DEBIAN_CARGO" "$CACHE/bin/cargo"
    ln -sfn "$DEBIAN_RUSTC" "$CACHE/bin/rustc"
    ln -sfn "$DEBIAN_RUSTDOC" "$CACHE/bin/rustdoc"
    export PATH="$CACHE/bin:$PATH" RUSTC="$DEBIAN_RUSTC" RUSTDOC="$DEBIAN_RUSTDOC" CARGO="$DEBIAN_CARGO" \
        CARGO_TARGET_DIR="$CROSS_TARGET_DIR"
    unset RUSTUP_TOOLCHAIN RUSTC_WRAPPER RUSTFLAGS RUSTDOCFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_TARGET VIRTUAL_ENV
    # Each step sets its own: an inherited CARGO_TARGET_<triple>_LINKER would even silently replace zig and break
    # maturin's manylinux check.
    local v
    for v in $(compgen -e | grep -E '^CARGO_TARGET_.*_(LINKER|RUNNER|RUSTFLAGS)$' || true); do unset "$v"; done
}

crate_version() { sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1; }

# Keep the bytes of the artifacts free of this checkout's path and of $CARGO_HOME (reproducible anywhere).
remap_flags() {
    local cargo_home=${CARGO_HOME:-$HOME/.cargo}
    echo "--remap-path-prefix=$REPO=/build/gridpilot --remap-path-prefix=$cargo_home=/cargo"
}

source_date_epoch() {
    if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
        echo "$SOURCE_DATE_EPOCH"
    else
        git -C "$REPO" log -1 --format=%ct 2>/dev/null || die "SOURCE_DATE_EPOCH is unset and $REPO is not a git checkout"
    fi
}

# Where the foreign std may come from: the std must be built from the same release as this rustc. Prints the
# reason it is not (empty when it is). Cheap: the version strings, then a compile of a one-line crate.
std_mismatch() {
    local arch=$1 triple libdir want found
    triple=$(triple_of "$arch")
    libdir="$(sysroot_of "$arch")/lib/rustlib/$triple/lib"
    want=$("$DEBIAN_RUSTC" -V)
    ls "$libdir"/libcore-*.rmeta >/dev/null 2>&1 || { echo "no std for $triple in $(sysroot_of "$arch")"; return; }
    # rustc writes its own `rustc -V` into the metadata of every crate it compiles, std included.
    found=$(grep -a -o -m1 'rustc [0-9][0-9.]*[^)]*)[^)]*)' "$libdir"/libcore-*.rmeta | head -n1 || true)
    if [ "$found" != "$want" ]; then
        echo "the $triple std was built by '${found:-an unknown rustc}', but the compiler is '$want'"
        return
    fi
    # Never `-o /dev/null`: rustc replaces its output file, and as root that turns /dev/null into a file.
    mkdir -p "$CACHE/probe"
    if ! echo 'pub fn probe() -> String { String::from("x") }' |
        "$DEBIAN_RUSTC" --sysroot "$(sysroot_of "$arch")" --target "$triple" --crate-type rlib \
            --crate-name probe --emit metadata -o "$CACHE/probe/$arch.rmeta" - 2>"$CACHE/probe/$arch.log"; then
        echo "$DEBIAN_RUSTC cannot compile against the $triple std (see $CACHE/probe/$arch.log)"
    fi
}

# ---- private apt configuration -----------------------------------------------------------------------------

# The host's Debian mirrors, from its own apt sources (one-line and deb822 formats): prints the URI serving
# suite $1, or nothing.
host_mirror_for() {
    local suite=$1 f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v s="$suite" '$1 == "deb" {
            i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == s) { print $i; exit } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v s="$suite" 'BEGIN { RS = ""; FS = "\n" } {
            uri = ""; hit = 0; on = 1
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^#/) continue
                k = $i; sub(/:.*/, "", k); v = $i; sub(/^[^:]*:[ \t]*/, "", v)
                if (k == "URIs") { split(v, u, /[ \t]+/); uri = u[1] }
                if (k == "Suites") { n = split(v, ss, /[ \t]+/); for (j = 1; j <= n; j++) if (ss[j] == s) hit = 1 }
                if (k == "Enabled" && v ~ /^(no|false)/) on = 0
            }
            if (hit && on && uri != "") { print uri; exit } }' "$f"
    done | head -n1
}

# Report what the host's apt sources offer and choose the mirrors: the host's archive mirror for bookworm and
# trixie, its security mirror for the *-security suites. trixie need not be listed there (a Debian 12 host
# lists only bookworm*): the private configuration adds it, from the same mirror.
MIRROR=""
SECURITY_MIRROR=""
choose_mirrors() {
    [ -n "$MIRROR" ] && return 0
    local codename t
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    MIRROR=$(host_mirror_for "$codename")
    SECURITY_MIRROR=$(host_mirror_for "$codename-security")
    t=$(host_mirror_for trixie)
    log "host apt sources: $codename at ${MIRROR:-<not listed>}; $codename-security at ${SECURITY_MIRROR:-<not listed>}; trixie at ${t:-<not listed: the private configuration adds it>}"
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
}

# The URI for suite $1: where the host's sources take it from, else the archive or security mirror.
mirror_for_suite() {
    local uri
    uri=$(host_mirror_for "$1")
    [ -n "$uri" ] && { echo "$uri"; return; }
    case $1 in *-security) echo "$SECURITY_MIRROR" ;; *) echo "$MIRROR" ;; esac
}

apt_dir_of() { echo "$CACHE/apt/$(debarch_of "$1")"; }

# apt-get / apt-cache under the private configuration of architecture $1.
papt() {
    local arch=$1 cmd=$2
    shift 2
    APT_CONFIG="$(apt_dir_of "$arch")/apt.conf" "$cmd" "$@"
}

# The suite written into the private sources for $1: itself, or its alias when the mirror's own index of
# $1 is unusable (see apt_update).
suite_alias() { case $1 in trixie) echo stable ;; trixie-security) echo stable-security ;; esac; }

write_apt_config() {
    local arch=$1 d debarch keyring valid s uri
    shift
    d=$(apt_dir_of "$arch")
    debarch=$(debarch_of "$arch")
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/empty" "$CACHE/debs/$debarch"
    : >>"$d/status"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    # Trust the mirror's Release files exactly as far as the host's own apt does (this machine kind sets
    # Check-Valid-Until false for its snapshot mirror).
    valid=$(apt-config dump Acquire::Check-Valid-Until | sed -n 's/^Acquire::Check-Valid-Until "\(.*\)";$/\1/p')
    : >"$d/sources.list"
    for s in "$@"; do
        uri=$(mirror_for_suite "$s")
        echo "deb [arch=$debarch signed-by=$keyring] $uri $s main" >>"$d/sources.list"
    done
    # APT_CONFIG is read before Dir::Etc::parts and Dir::Etc::main, so these settings keep out every file of
    # /etc/apt: its sources, pins, hooks (docker-clean deletes .debs) and the system's architecture list.
    cat >"$d/apt.conf" <<EOF
Dir::Etc::main "$d/empty/apt.conf";
Dir::Etc::parts "$d/empty";
Dir::Etc::sourcelist "$d/sources.list";
Dir::Etc::sourceparts "$d/empty";
Dir::Etc::preferences "$d/empty/none";
Dir::Etc::preferencesparts "$d/empty";
Dir::State "$d";
Dir::State::lists "$d/lists";
Dir::State::status "$d/status";
Dir::Cache "$d/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Architecture "$debarch";
APT::Architectures { "$debarch"; };
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::Check-Valid-Until "${valid:-true}";
EOF
}

lists_have() {  # lists_have ARCH SUITE: the private lists hold SUITE's main index for ARCH
    local arch=$1 suite=$2
    compgen -G "$(apt_dir_of "$arch")/lists/*_dists_${suite}_main_binary-$(debarch_of "$arch")_Packages*" >/dev/null
}

# apt-get update under the private configuration. A mirror caught mid-sync serves an index whose hash is not
# the one its signed InRelease lists; apt then drops that suite. For trixie, retry through the suite alias
# (stable), accepted only if its own signed Release names the same codename.
apt_update() {
    local arch=$1 s a used=() retry=0
    choose_mirrors
    read -r -a suites <<<"$(suites_of "$arch")"
    write_apt_config "$arch" "${suites[@]}"
    log "apt-get update (private, $(debarch_of "$arch")): ${suites[*]}"
    papt "$arch" apt-get update -qq >"$CACHE/apt-update-$arch.log" 2>&1 || true
    for s in "${suites[@]}"; do
        if lists_have "$arch" "$s"; then
            used+=("$s")
            continue
        fi
        a=$(suite_alias "$s")
        [ -n "$a" ] || die "apt could not fetch a verified $s index for $(debarch_of "$arch") (see $CACHE/apt-update-$arch.log)"
        log "the mirror's $s index for $(debarch_of "$arch") does not match its signed InRelease (mirror sync in progress?): trying the alias $a"
        used+=("$a")
        retry=1
    done
    [ "$retry" -eq 1 ] || return 0
    write_apt_config "$arch" "${used[@]}"
    papt "$arch" apt-get update -qq >"$CACHE/apt-update-$arch.log" 2>&1 || true
    for i in "${!suites[@]}"; do
        s=${suites[$i]} a=${used[$i]}
        [ "$s" = "$a" ] && continue
        local release
        release=$(compgen -G "$(apt_dir_of "$arch")/lists/*_dists_${a}_InRelease" | head -n1 || true)
        if ! lists_have "$arch" "$a" || ! grep -q "^Codename: $s\$" "${release:-/dev/null}"; then
            die "no verified $s index for $(debarch_of "$arch"): neither $s nor $a (Codename $s) could be fetched from the mirror (see $CACHE/apt-update-$arch.log); try again when the mirror has synced"
        fi
        log "using $a: its signed Release is Codename $s ($(sed -n 's/^Version: //p' "$release" | head -n1))"
    done
}

# Candidate version of package $2 for architecture $1 under the private configuration.
papt_candidate() {
    papt "$1" apt-cache policy "$2" | sed -n 's/^ *Candidate: //p' | grep -v '(none)' || true
}

# Download packages (names or name=version) for architecture $1 into the shared .deb cache; prints their
# file names, one a line.
papt_download() {
    local arch=$1 debs
    shift
    debs="$CACHE/debs/$(debarch_of "$arch")"
    (cd "$debs" && papt "$arch" apt-get download -qq "$@" >/dev/null)
    local p name ver file
    for p in "$@"; do
        name=${p%%=*}
        ver=${p#*=}
        [ "$ver" = "$p" ] && ver=$(papt_candidate "$arch" "$name")
        # apt writes an epoch's colon as %3a; arch:all packages end in _all.deb.
        file=$(compgen -G "$debs/${name}_${ver//:/%3a}_*.deb" | head -n1 || true)
        [ -f "$file" ] || die "apt-get download gave no file for $name $ver"
        echo "$file"
    done
}

# Extract a .deb into a root directory whose /bin, /lib, /sbin are links into /usr (merged /usr, as trixie's
# packages expect; bookworm's files under /lib land in /usr/lib through the links).
extract_deb() {
    local deb=$1 root=$2 d
    mkdir -p "$root/usr"
    for d in bin lib sbin; do
        mkdir -p "$root/usr/$d"
        [ -e "$root/$d" ] || ln -s "usr/$d" "$root/$d"
    done
    dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink --no-same-owner -C "$root" -f -
}
