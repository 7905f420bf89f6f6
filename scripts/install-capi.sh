#!/usr/bin/env bash
# Builds isonvme's C library and installs it for C and C++ programs:
#   PREFIX/lib/libisonvme.so, PREFIX/lib/libisonvme.a,
#   PREFIX/include/isonvme.h, PREFIX/lib/pkgconfig/isonvme.pc
#
#   scripts/install-capi.sh [PREFIX]        (default /usr/local)
#   cc app.c $(pkg-config --cflags --libs isonvme)
#
# ISONVME_PROFILE=debug installs the debug build (the tests use it).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
profile=${ISONVME_PROFILE:-release}
flag=--release
[ "$profile" = release ] || flag=
# shellcheck disable=SC2086
cargo build --quiet --locked -p isonvme-capi --lib $flag
target=${CARGO_TARGET_DIR:-target}/$profile
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$target/libisonvme.so" "$prefix/lib/"
install -m 0644 "$target/libisonvme.a" "$prefix/lib/"
install -m 0644 capi/include/isonvme.h "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" capi/isonvme.pc.in > "$prefix/lib/pkgconfig/isonvme.pc"
echo "installed isonvme $version in $prefix (pkg-config: PKG_CONFIG_PATH=$prefix/lib/pkgconfig)"
