#!/bin/sh
# Runs inside the Debian bullseye build root: builds CPython 3.11 from Debian's
# own source package (bookworm's python3.11) into /opt/python3.11, linked
# against bullseye's glibc 2.31, so the executable built with it runs there.
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
echo "deb-src http://deb.debian.org/debian bookworm main" > /etc/apt/sources.list.d/python-src.list
# A mirror or resolver that stumbles once (seen under load: getaddrinfo EBUSY) must not
# fail a build that takes ten minutes: each fetch gets three tries, and apt its own.
fetch() {
    for try in 1 2 3; do
        apt-get -o Acquire::Retries=3 "$@" && return 0
        echo "apt-get $*: try $try failed" >&2
        sleep $((try * 5))
    done
    return 1
}
fetch update -qq
rm -rf /opt/src && mkdir -p /opt/src && cd /opt/src
chown _apt /opt/src 2>/dev/null || true
fetch source -qq --download-only python3.11
tar -xf python3.11_*.orig.tar.*
cd Python-3.11*/
# --enable-shared: PyInstaller bundles libpython; rpath so the build needs no LD_LIBRARY_PATH.
./configure -q --prefix=/opt/python3.11 --enable-shared --with-ensurepip=install \
    LDFLAGS="-Wl,-rpath,/opt/python3.11/lib"
make -s -j"$(nproc)" >/dev/null
make -s install >/dev/null
cd / && rm -rf /opt/src /var/lib/apt/lists/* /etc/apt/sources.list.d/python-src.list
/opt/python3.11/bin/python3.11 -c 'import ssl, ctypes, lzma, bz2, zlib, uuid; print(ssl.OPENSSL_VERSION)'
