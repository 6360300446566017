#!/bin/bash
# Packs what the root test tiers need on a host that has no Swift toolchain and few of Debian's
# tools (the lent cgroup-v2 machine, see Docs/testing.md): the release binaries with the Swift
# standard library linked in and stripped, a static busybox and escape probe, and Debian's
# iproute2, tcpdump, nftables, lxcfs, util-linux and e2fsprogs programs with the libraries they
# load. Tests/device/run.sh unpacks it there. Output: .build-device/bundle.tar.xz.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT=.build-device
STAGE=$OUTPUT/stage
rm -rf "$STAGE"
mkdir -p "$STAGE/bin" "$STAGE/tools" "$STAGE/lib"

# Built by `make release` (make device-bundle runs it first).
for product in berth berth-agent berth-spawn berth-monitor; do
    [ -x ".build/release/$product" ] || { echo "no .build/release/$product: run make device-bundle" >&2; exit 1; }
    install -m 755 ".build/release/$product" "$STAGE/bin/"
done
strip "$STAGE"/bin/*

install -m 755 /bin/busybox "$STAGE/tools/busybox"
"${CC:-cc}" -static -O1 -o "$STAGE/tools/probe" Tests/security/probe.c

# Debian's builds of the tools the tiers use, with the libraries they load (not glibc: the
# host's newer one runs programs linked against Debian 12's). The runner registers only the
# libraries the host lacks.
bundle_tool() {
    install -m 755 "$1" "$STAGE/tools/"
    ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// && $3 !~ /\/(libc|libm|libpthread|libdl|librt)\.so/ {print $3}' |
        while read -r library; do cp -L "$library" "$STAGE/lib/"; done
}
for tool in /usr/sbin/ip /usr/bin/tcpdump /usr/sbin/nft /usr/bin/lxcfs /usr/bin/nsenter /usr/bin/ipcmk /usr/bin/ipcrm \
            /usr/sbin/losetup /usr/sbin/mke2fs /usr/sbin/resize2fs /usr/sbin/e2fsck /usr/sbin/dumpe2fs; do
    bundle_tool "$tool"
done
# The benchmark's anchor (Tests/device/run.sh bench): crun with its libraries, and the shared
# anchor scripts it is measured with, which are run from the bundle, never added to the project.
if command -v crun >/dev/null && [ -f ../shared/anchors/bench-lib.sh ]; then
    bundle_tool "$(command -v crun)"
    cp -r ../shared/anchors "$STAGE/anchors"
else
    echo "no crun or ../shared/anchors here: the bundle cannot run the bench tier" >&2
fi
# lxcfs loads its filesystem from a fixed path; the runner installs it there when missing.
cp -L /usr/lib/x86_64-linux-gnu/lxcfs/liblxcfs.so "$STAGE/lib/"
git rev-parse --short HEAD >"$STAGE/commit"

tar -C "$STAGE" -cf - . | xz -T2 -6 >"$OUTPUT/bundle.tar.xz"
rm -rf "$STAGE"
echo "$OUTPUT/bundle.tar.xz: $(du -h "$OUTPUT/bundle.tar.xz" | cut -f1) (commit $(git rev-parse --short HEAD))"
