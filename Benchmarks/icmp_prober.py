#!/usr/bin/env python3
"""icmp_prober.py ADDRESS OUT STOPFILE: pings ADDRESS every 10 ms until STOPFILE exists and
appends the wall-clock time of every echo reply to OUT (one per line). Run as root, in the
network namespace the probes must come from."""
import os, select, socket, struct, sys, time

address, out_path, stop_file = sys.argv[1], sys.argv[2], sys.argv[3]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


with open(out_path, "a", buffering=1) as out:
    seq = 0
    next_send = time.monotonic()
    while not os.path.exists(stop_file):
        now = time.monotonic()
        if now >= next_send:
            seq = (seq + 1) & 0xFFFF
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            payload = b"berth-probe"
            packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload
            try:
                sock.sendto(packet, (address, 0))
            except OSError:
                pass  # no route for a moment: counts as no reply
            next_send += 0.01
        ready, _, _ = select.select([sock], [], [], max(0.0, next_send - time.monotonic()))
        if ready:
            data = sock.recv(2048)
            icmp = data[(data[0] & 0x0F) * 4:]
            if len(icmp) >= 8 and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                out.write("%.6f\n" % time.time())
