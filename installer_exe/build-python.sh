#!/bin/sh
# Runs inside the Debian bullseye build root: builds CPython 3.11 from Debian's
# own source package (bookworm's python3.11) into /opt/python3.11, linked
# against bullseye's glibc 2.31, so the executable built with it runs there.
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
# The source package is already in /opt/src: the host fetched it
# (installer_exe/buildroot.py), so this needs no network.
cd /opt/src
tar -xf python3.11_*.orig.tar.*
cd Python-3.11*/
# --enable-shared: PyInstaller bundles libpython; rpath so the build needs no LD_LIBRARY_PATH.
./configure -q --prefix=/opt/python3.11 --enable-shared --with-ensurepip=install \
    LDFLAGS="-Wl,-rpath,/opt/python3.11/lib"
make -s -j"$(nproc)" >/dev/null
make -s install >/dev/null
cd / && rm -rf /opt/src
/opt/python3.11/bin/python3.11 -c 'import ssl, ctypes, lzma, bz2, zlib, uuid; print(ssl.OPENSSL_VERSION)'
