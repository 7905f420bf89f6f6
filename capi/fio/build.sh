#!/usr/bin/env bash
# Builds fio's ioengine for isonvme, target/fio/libisonvme_fio.so, against
# the headers of the fio installed here (Debian's, from its source package).
# Installs fio and dpkg-dev when missing, adds a deb-src entry for Debian's
# archive to apt's sources when there is none, and keeps the configured fio
# source in target/fio-src (a second run downloads nothing).
#
#   capi/fio/build.sh
#   fio --thread --ioengine=external:$PWD/target/fio/libisonvme_fio.so \
#       --filename=sim,size=1G --rw=randread --bs=4k --iodepth=32 --size=512m
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

need=()
command -v fio >/dev/null || need+=(fio)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
command -v cc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    echo "fio engine: installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
version=$(fio --version | sed 's/^fio-//')
package=$(dpkg-query -W -f='${Version}' fio 2>/dev/null || echo "")
src=$root/target/fio-src/fio-$version
if [ ! -f "$src/config-host.h" ]; then
    if ! grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "fio engine: adding a deb-src entry for Debian's archive (fio's headers come from its source package)"
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
            sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
                $SUDO tee /etc/apt/sources.list.d/isonvme-deb-src.sources >/dev/null
        else
            grep -hE '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' |
                $SUDO tee /etc/apt/sources.list.d/isonvme-deb-src.list >/dev/null
        fi
        $SUDO apt-get update -qq
    fi
    mkdir -p "$root/target/fio-src"
    (cd "$root/target/fio-src" && apt-get source -qq "fio${package:+=$package}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    [ -d "$src" ] || { echo "fio engine: apt-get source fio did not unpack fio-$version into target/fio-src" >&2; exit 1; }
    # The same configuration Debian builds with (debian/rules), without the
    # GUI: the struct layouts the engine shares with fio must match.
    (cd "$src" && ./configure --disable-native --prefix=/usr >/dev/null)
fi
cargo build --quiet --release --locked -p isonvme-capi --lib
lib=${CARGO_TARGET_DIR:-$root/target}/release
mkdir -p "$root/target/fio"
cc -Wall -Werror -O2 -g -D_GNU_SOURCE -D_LARGEFILE_SOURCE -D_FILE_OFFSET_BITS=64 \
    -include "$src/config-host.h" -I"$src" -I"$root/capi/include" \
    -shared -rdynamic -fPIC -o "$root/target/fio/libisonvme_fio.so" "$root/capi/fio/isonvme_fio.c" \
    -L"$lib" -lisonvme -Wl,-rpath,"$lib"
echo "fio engine: target/fio/libisonvme_fio.so for fio $version (ioengine=external:$root/target/fio/libisonvme_fio.so)"
