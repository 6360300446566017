#!/bin/sh
# Installs the Debian packages Berth needs to build, test and run (idempotent; apt only when
# something is missing). Swift itself is expected at /opt/swift or on PATH.
set -eu
need="libcap-dev libsqlite3-dev busybox-static e2fsprogs btrfs-progs zstd mount util-linux tar gzip xz-utils python3 iproute2 nftables tcpdump lxcfs protobuf-compiler python3-protobuf python3-cryptography debootstrap"
[ "${BERTH_BENCH:-0}" = 1 ] && need="$need crun iperf3 systemd-container"
[ "${BERTH_PROTO:-0}" = 1 ] && need="$need protobuf-compiler"
missing=""
for p in $need; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq $missing >/dev/null
fi
command -v swift >/dev/null 2>&1 || [ -x /opt/swift/usr/bin/swift ] || { echo "swift not found (expected on PATH or at /opt/swift)" >&2; exit 1; }
