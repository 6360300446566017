#!/bin/bash
# Network tier: routed and bridged VPS networking on the real kernel. The node is a network
# namespace made here ($RUN_ID-node, the agent runs in it through nsenter); its uplink is a veth
# to a "LAN client" namespace ($RUN_ID-lan); a second LAN hangs off a bridge in the node. Every
# address is in 198.18.0.0/15 or fd00:b17::/32, and no namespace has a default route out.
cd "$(dirname "$0")/../.." || exit 1
RUN_ID=${RUN_ID:-bnt$$}
source Tests/integration/lib.sh

tier_prelude network nft ip nsenter python3 tcpdump
NODE=$RUN_ID-node LAN=$RUN_ID-lan LAN2=$RUN_ID-lan2
in_node() { ip netns exec "$NODE" "$@"; }
in_lan() { ip netns exec "$LAN" "$@"; }
in_lan2() { ip netns exec "$LAN2" "$@"; }
# A host tool run in a VPS's network namespace only (its view of the wire, not its root).
in_vps_net() { local pid; pid=$(vps_pid "$1"); shift; nsenter --net=/proc/"$pid"/ns/net "$@"; }

net_cleanup() {
    cleanup_all
    for ns in "$NODE" "$LAN" "$LAN2"; do ip netns del "$ns" 2>/dev/null; done
    true
}
trap net_cleanup EXIT

# The node: uplink up0 <-> lan0 (198.18.0.0/24, fd00:b17::/64, routed VPS addresses proxied on
# it), and bridge br-lan <-> lan2 (198.18.1.0/24 and fd00:b17:1::/64 for bridged VPSs).
ip netns add "$NODE" && ip netns add "$LAN" && ip netns add "$LAN2" || exit 1
ip -n "$NODE" link set lo up
ip -n "$NODE" link add up0 type veth peer name lan0 netns "$LAN"
ip -n "$NODE" addr add 198.18.0.1/24 dev up0
ip -n "$NODE" addr add fd00:b17::1/64 dev up0 nodad
ip -n "$NODE" link set up0 up
ip -n "$LAN" link set lo up
ip -n "$LAN" addr add 198.18.0.100/24 dev lan0
ip -n "$LAN" addr add fd00:b17::100/64 dev lan0 nodad
ip -n "$LAN" link set lan0 up
# A fixed address (else the bridge takes its ports' lowest MAC, which changes as VPSs join).
ip -n "$NODE" link add br-lan address 02:b1:7f:1a:00:01 type bridge
ip -n "$NODE" link add up1 type veth peer name lan2 netns "$LAN2"
ip -n "$NODE" link set up1 master br-lan
ip -n "$NODE" link set up1 up
ip -n "$NODE" link set br-lan up
ip -n "$NODE" addr add 198.18.1.1/24 dev br-lan
ip -n "$NODE" addr add fd00:b17:1::1/64 dev br-lan nodad
ip -n "$LAN2" link set lo up
ip -n "$LAN2" addr add 198.18.1.100/24 dev lan2
ip -n "$LAN2" addr add fd00:b17:1::100/64 dev lan2 nodad
ip -n "$LAN2" link set lan2 up
# Until the links' link-local addresses pass duplicate address detection (1-2 s after they come
# up) the node cannot solicit a LAN neighbour: a first ping to the LAN right after would wait
# past its deadline. A real LAN is up long before its VPSs start.
links_settled() { local ns; for ns in "$NODE" "$LAN" "$LAN2"; do [ -z "$(ip -n "$ns" -6 addr show tentative)" ] || return 1; done; }
for _ in $(seq 100); do links_settled && break; sleep 0.05; done
links_settled || { echo "the test links still have tentative IPv6 addresses after 5 s"; exit 1; }

mkdir -p "$WORK"
cat >"$WORK/node.json" <<EOF
{ "network": { "uplink": "up0",
               "ranges": ["198.18.0.0/24", "fd00:b17::/64", "198.18.1.0/24", "fd00:b17:1::/64"],
               "bridges": [ { "name": "br-lan", "gateway4": "198.18.1.1", "gateway6": "fd00:b17:1::1" } ] } }
EOF
export AGENT_WRAPPER="nsenter --net=/run/netns/$NODE"
export AGENT_EXTRA="--config $WORK/node.json"
echo "network run $RUN_ID (node namespace $NODE, work dir $WORK)"
agent_start || exit 1
"$BERTH" template build busybox >/dev/null || { echo "template build failed"; exit 1; }

A=$(vps_name a); B=$(vps_name b); C=$(vps_name c)
A4=198.18.0.10 A6=fd00:b17::10 B4=198.18.0.11 B6=fd00:b17::11 C4=198.18.1.10
LAN4=198.18.0.100 LAN6=fd00:b17::100

# UDP/TCP helpers on the LAN client: a listener that prints what it got and from whom.
lan_listen() { # PROTO PORT SECONDS ADDR: prints "peer payload" lines
    in_lan python3 - "$@" <<'PY'
import socket, sys, select
proto, port, seconds, addr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
if proto == "tcp": s.listen(4)
open("/dev/stdout", "w").close()
end = __import__("time").time() + seconds
while True:
    left = end - __import__("time").time()
    if left <= 0: break
    if not select.select([s], [], [], left)[0]: break
    if proto == "udp":
        data, peer = s.recvfrom(2048)
    else:
        c, peer = s.accept(); data = c.recv(2048); c.close()
    print(peer[0], data.decode(errors="replace").strip(), flush=True)
PY
}

t_net_create_start() {
    "$BERTH" create "$A" --template busybox --disk 64M --ip $A4 --ip $A6 --nameserver 198.18.0.53 --searchdomain example.test >/dev/null
    "$BERTH" create "$B" --template busybox --disk 64M --ip $B4 --ip $B6 >/dev/null
    "$BERTH" start "$A" >/dev/null
    "$BERTH" start "$B" >/dev/null
    expect_contains "$("$BERTH" status "$A")" "ips=$A4,$A6 net=routed"
    local addrs; addrs=$("$BERTH" exec "$A" -- ip -o addr show dev eth0 | awk '{print $4}' | tr '\n' ' ')
    expect_contains "$addrs" "$A4/32"
    expect_contains "$addrs" "$A6/128"
    expect_contains "$("$BERTH" exec "$A" -- ip route)" "default via 169.254.0.1 dev eth0 onlink"
    expect_contains "$("$BERTH" exec "$A" -- ip -6 route)" "default via fe80::1 dev eth0"
    expect_contains "$("$BERTH" exec "$A" -- cat /etc/resolv.conf)" "nameserver 198.18.0.53"
    expect_contains "$("$BERTH" exec "$A" -- cat /etc/resolv.conf)" "search example.test"
    expect_contains "$("$BERTH" exec "$A" -- cat /etc/hosts)" "$A4	$A"
    # Host side: /32 and /128 routes, permanent neighbours, proxy entries on the uplink.
    expect_contains "$(in_node ip route show proto 183)" "$A4 dev bv-$A"
    expect_contains "$(in_node ip -6 route show proto 183)" "$A6 dev bv-$A"
    expect_contains "$(in_node ip neigh show dev "bv-$A")" "$A4 lladdr"
    expect_contains "$(in_node ip neigh show dev "bv-$A")" "PERMANENT"
    expect_contains "$(in_node ip neigh show proxy)" "$A4 dev up0"
    expect_contains "$(in_node ip -6 neigh show proxy)" "$A6 dev up0"
    # Proxied ARP/NDP answers go out at once, not after the kernel's random delay of up to 0.8 s.
    expect_eq "$(in_node cat /proc/sys/net/ipv4/neigh/up0/proxy_delay)" 0
    expect_eq "$(in_node cat /proc/sys/net/ipv6/neigh/up0/proxy_delay)" 0
}

t_net_reach_icmp() {
    for target in $B4 $B6 $LAN4 $LAN6; do
        "$BERTH" exec "$A" -- ping -c1 -W2 $target >/dev/null || fail "A cannot ping $target"
    done
    in_lan busybox ping -c1 -W2 $A4 >/dev/null || fail "LAN cannot ping $A4"
    in_lan busybox ping6 -c1 -W2 $A6 >/dev/null || fail "LAN cannot ping $A6"
}

t_net_reach_tcp_udp() {
    # TCP into a VPS (busybox nc inside B), from A and from the LAN, over IPv4 and IPv6.
    for target in $B4 $B6; do
        for from in vps lan; do
            "$BERTH" exec "$B" -- sh -c 'nc -l -p 7001 >/tmp/got 2>&1 &' ; sleep 0.3
            if [ $from = vps ]; then
                echo "hello-$target" | "$BERTH" exec "$A" -- nc -w 2 "$target" 7001 || true
            else
                in_lan python3 -c "import socket,sys; s=socket.create_connection(('$target',7001),2); s.sendall(b'hello-$target\n'); s.close()"
            fi
            sleep 0.3
            expect_eq "$("$BERTH" exec "$B" -- cat /tmp/got)" "hello-$target" "(TCP from $from)"
        done
    done
    # TCP out of a VPS to the LAN, with the VPS address as source (proxy ARP/NDP for the replies).
    for pair in "$LAN4 $A4" "$LAN6 $A6"; do
        set -- $pair
        lan_listen tcp 7002 3 "$1" >"$WORK/tcp.out" & local listener=$!
        sleep 0.4
        echo "from-a" | "$BERTH" exec "$A" -- nc -w 2 "$1" 7002 || true
        wait $listener
        expect_eq "$(cat "$WORK/tcp.out")" "$2 from-a" "(TCP to $1)"
    done
    # UDP both ways (the VPS end is a host python in A's network namespace: busybox has no UDP nc).
    lan_listen udp 7003 3 $LAN4 >"$WORK/udp.out" & local listener=$!
    sleep 0.4
    in_vps_net "$A" python3 -c "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'udp-a', ('$LAN4', 7003))"
    wait $listener
    expect_eq "$(cat "$WORK/udp.out")" "$A4 udp-a"
    lan_listen udp 7004 3 $LAN6 >"$WORK/udp6.out" & listener=$!
    sleep 0.4
    in_vps_net "$B" python3 -c "import socket; socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b'udp-b', ('$LAN6', 7004))"
    wait $listener
    expect_eq "$(cat "$WORK/udp6.out")" "$B6 udp-b"
}

spoofed_count() { in_node nft list counter "$1" berth spoofed | awk '/packets/ {print $2}'; }

t_net_ip_spoofing_dropped() {
    local before; before=$(spoofed_count inet)
    lan_listen udp 7005 4 $LAN4 >"$WORK/spoof4.out" & local l4=$!
    lan_listen udp 7006 4 $LAN6 >"$WORK/spoof6.out" & local l6=$!
    sleep 0.4
    # B claims A's addresses, an unassigned one from the node's range, and loopback/unspecified.
    "$BERTH" exec "$B" -- sysctl -w net.ipv6.conf.eth0.accept_dad=0 >/dev/null
    "$BERTH" exec "$B" -- ip addr add $A4/32 dev eth0
    "$BERTH" exec "$B" -- ip addr add $A6/128 dev eth0
    "$BERTH" exec "$B" -- ip addr add 198.18.0.99/32 dev eth0
    for src in $A4 198.18.0.99; do
        in_vps_net "$B" python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('$src',0)); s.sendto(b'spoof', ('$LAN4', 7005))"
    done
    in_vps_net "$B" python3 -c "import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('$A6',0)); s.sendto(b'spoof', ('$LAN6', 7006))"
    "$BERTH" exec "$B" -- ping -c1 -W1 -I $A4 $LAN4 >/dev/null 2>&1 && fail "ping from A's address got through"
    "$BERTH" exec "$B" -- ping -c1 -W1 -I $A4 $A4 >/dev/null 2>&1 || true
    wait $l4 $l6
    [ ! -s "$WORK/spoof4.out" ] || fail "spoofed IPv4 arrived: $(cat "$WORK/spoof4.out")"
    [ ! -s "$WORK/spoof6.out" ] || fail "spoofed IPv6 arrived: $(cat "$WORK/spoof6.out")"
    local after; after=$(spoofed_count inet)
    [ "$after" -ge $((before + 4)) ] || fail "spoof counter rose only from $before to $after"
    "$BERTH" exec "$B" -- ip addr del $A4/32 dev eth0
    "$BERTH" exec "$B" -- ip addr del $A6/128 dev eth0
    "$BERTH" exec "$B" -- ip addr del 198.18.0.99/32 dev eth0
    # A still reaches the LAN with its own address.
    "$BERTH" exec "$A" -- ping -c1 -W2 $LAN4 >/dev/null
}

t_net_arp_ndp_ra_spoofing() {
    local neigh_before route6_before amac
    neigh_before=$(in_node ip neigh show | grep -v -e STALE -e REACHABLE -e DELAY -e PROBE -e FAILED -e INCOMPLETE | sort)
    route6_before=$(in_node ip -6 route | sort)
    amac=$("$BERTH" status "$A" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["mac"])')
    # Gratuitous ARP claiming A's address, and B taking A's MAC.
    "$BERTH" exec "$B" -- arping -U -c 2 -I eth0 -s $A4 169.254.0.1 >/dev/null 2>&1 || true
    local bmac; bmac=$("$BERTH" status "$B" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["mac"])')
    "$BERTH" exec "$B" -- ip link set eth0 address "$amac"
    "$BERTH" exec "$B" -- ping -c1 -W1 $LAN4 >/dev/null 2>&1 && fail "B got through with A's MAC"
    "$BERTH" exec "$B" -- ip link set eth0 address "$bmac"
    "$BERTH" exec "$B" -- ping -c1 -W2 $LAN4 >/dev/null || fail "B lost its network after restoring its MAC"
    # Unsolicited neighbour advertisement for A's IPv6 address and a router advertisement.
    local before; before=$(spoofed_count inet)
    in_vps_net "$B" python3 - "$A6" "$bmac" <<'PY'
import socket, sys, struct
target, mac = socket.inet_pton(socket.AF_INET6, sys.argv[1]), bytes.fromhex(sys.argv[2].replace(":", ""))
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
ifindex = socket.if_nametoindex("eth0")
na = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + target + bytes([2, 1]) + mac
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0) + bytes([3, 4, 64, 0xc0]) + struct.pack("!III", 86400, 14400, 0) + socket.inet_pton(socket.AF_INET6, "fd00:b17:99::")
for packet in (na, ra):
    for dest in ("ff02::1", "fe80::1"):
        s.sendto(packet, (dest, 0, 0, ifindex))
PY
    "$BERTH" exec "$B" -- ping6 -c1 -W1 $LAN6 >/dev/null 2>&1 || true
    sleep 0.3
    local after; after=$(spoofed_count inet)
    [ "$after" -ge $((before + 2)) ] || fail "RA/NA spoofs were not dropped by the filter ($before -> $after)"
    expect_eq "$(in_node ip neigh show | grep -v -e STALE -e REACHABLE -e DELAY -e PROBE -e FAILED -e INCOMPLETE | sort)" "$neigh_before" "(node neighbour table)"
    expect_eq "$(in_node ip -6 route | sort)" "$route6_before" "(node IPv6 routes)"
    expect_contains "$(in_node ip neigh show $A4)" "dev bv-$A lladdr $amac PERMANENT"
    # A is unaffected.
    in_lan busybox ping -c1 -W2 $A4 >/dev/null || fail "A unreachable after B's spoofing"
    in_lan busybox ping6 -c1 -W2 $A6 >/dev/null || fail "A unreachable over IPv6 after B's spoofing"
}

t_net_no_sniffing() {
    # A captures on every interface of its namespace while B talks to the LAN, the LAN to B,
    # and B broadcasts; A must see none of it (only A's own addresses are excluded).
    local ll; ll=$(in_vps_net "$A" ip -6 -o addr show dev eth0 scope link | awk '{print $4}' | cut -d/ -f1)
    in_vps_net "$A" timeout 4 tcpdump -ni any -w "$WORK/a.pcap" "not host $A4 and not host $A6 and not host $ll" >/dev/null 2>&1 & local cap=$!
    sleep 1
    "$BERTH" exec "$B" -- ping -c2 -i 0.2 -W1 $LAN4 >/dev/null
    "$BERTH" exec "$B" -- ping6 -c2 -i 0.2 -W1 $LAN6 >/dev/null
    in_lan busybox ping -c2 -i 0.2 -W1 $B4 >/dev/null
    "$BERTH" exec "$B" -- ping -b -c2 -W1 198.18.0.255 >/dev/null 2>&1 || true
    "$BERTH" exec "$B" -- ping6 -c2 -W1 ff02::1%eth0 >/dev/null 2>&1 || true
    wait $cap || true
    local seen; seen=$(tcpdump -nr "$WORK/a.pcap" 2>/dev/null | wc -l)
    expect_eq "$seen" 0 "(packets of others seen in A: $(tcpdump -nr "$WORK/a.pcap" 2>/dev/null | head -3))"
}

t_net_firewall_and_sysctls_inside() {
    # A template with nft (and its libraries) next to busybox: a VPS root runs its own firewall.
    local tpl="$WORK/nettools"
    rm -rf "$tpl"; mkdir -p "$tpl"
    cp -a "$WORK/data/templates/busybox/rootfs/." "$tpl/"
    for f in /usr/sbin/nft $(ldd /usr/sbin/nft | grep -o '/[^ ]*'); do
        mkdir -p "$tpl$(dirname "$f")"; cp -L "$f" "$tpl$f"
    done
    tar -C "$tpl" -cf "$WORK/nettools.tar" .
    "$BERTH" template import "nettools-$RUN_ID" "$WORK/nettools.tar" >/dev/null
    local F; F=$(vps_name f)
    "$BERTH" create "$F" --template "nettools-$RUN_ID" --disk 96M --ip 198.18.0.12 >/dev/null
    "$BERTH" start "$F" >/dev/null
    local node_rules; node_rules=$(in_node nft list ruleset | grep -v -e packets -e elements | md5sum)
    "$BERTH" exec "$F" -- nft add table inet vpsfw
    "$BERTH" exec "$F" -- nft add chain inet vpsfw in '{ type filter hook input priority 0; }'
    "$BERTH" exec "$F" -- nft add rule inet vpsfw in tcp dport 7010 drop
    "$BERTH" exec "$F" -- sh -c 'nc -l -p 7010 >/tmp/got 2>&1 &'
    "$BERTH" exec "$B" -- sh -c 'nc -l -p 7010 >/tmp/got 2>&1 &'
    sleep 0.3
    in_lan python3 -c "import socket; socket.create_connection(('198.18.0.12',7010),1)" 2>/dev/null && fail "F's own firewall did not block port 7010"
    in_lan python3 -c "import socket; s=socket.create_connection(('$B4',7010),2); s.sendall(b'ok\n'); s.close()" || fail "B's port 7010 was blocked by F's rule"
    expect_eq "$(in_node nft list ruleset | grep -v -e packets -e elements | md5sum)" "$node_rules" "(node ruleset changed)"
    # sysctls and routes belong to the VPS's namespace: echo replies off in F only; a route with
    # its own MTU and source address.
    local node_icmp; node_icmp=$(in_node sysctl -n net.ipv4.icmp_echo_ignore_all)
    "$BERTH" exec "$F" -- sysctl -w net.ipv4.icmp_echo_ignore_all=1 >/dev/null
    in_lan busybox ping -c1 -W1 198.18.0.12 >/dev/null 2>&1 && fail "F still answers pings"
    in_lan busybox ping -c1 -W1 $B4 >/dev/null || fail "B stopped answering pings"
    expect_eq "$(in_node sysctl -n net.ipv4.icmp_echo_ignore_all)" "$node_icmp"
    "$BERTH" set "$F" --ip-add 198.18.0.13 >/dev/null
    "$BERTH" exec "$F" -- ip route add $LAN4/32 via 169.254.0.1 dev eth0 onlink mtu 1400 src 198.18.0.13
    expect_contains "$("$BERTH" exec "$F" -- ip route get $LAN4)" "src 198.18.0.13"
    expect_contains "$(in_vps_net "$F" ip route show $LAN4)" "mtu 1400"
    lan_listen tcp 7011 3 $LAN4 >"$WORK/src.out" & local listener=$!
    sleep 0.4
    echo hi | "$BERTH" exec "$F" -- nc -w 2 $LAN4 7011 || true
    wait $listener
    expect_eq "$(cat "$WORK/src.out")" "198.18.0.13 hi"
    "$BERTH" destroy "$F" --force >/dev/null
    "$BERTH" template remove "nettools-$RUN_ID" >/dev/null
}

t_net_node_services_unreachable() {
    # A service on the node (its uplink address and the VPS gateway) is closed to VPSs; ping works.
    in_node python3 -c "
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7020)); s.listen(4)
s.settimeout(4)
try:
    c, _ = s.accept(); print('accepted', flush=True)
except OSError:
    pass
" >"$WORK/node-svc.out" & local svc=$!
    sleep 0.4
    local before; before=$(in_node nft list counter inet berth to_node | awk '/packets/ {print $2}')
    for target in 198.18.0.1 169.254.0.1; do
        "$BERTH" exec "$A" -- nc -w 1 $target 7020 </dev/null >/dev/null 2>&1 || true
    done
    in_lan python3 -c "import socket; socket.create_connection(('198.18.0.1', 7020), 2).close()" || fail "the LAN could not reach the node service (test broken)"
    wait $svc || true
    expect_eq "$(cat "$WORK/node-svc.out")" "accepted" "(only the LAN's connection should be accepted)"
    local after; after=$(in_node nft list counter inet berth to_node | awk '/packets/ {print $2}')
    [ "$after" -gt "$before" ] || fail "to_node counter did not move ($before -> $after)"
    "$BERTH" exec "$A" -- ping -c1 -W2 169.254.0.1 >/dev/null || fail "the gateway does not answer pings"
}

t_net_monitor_crash_cleanup() {
    # A monitor killed mid-life: the agent removes the VPS's filter elements and proxy entries,
    # the link goes with the namespace, and the next start works.
    local E; E=$(vps_name e)
    "$BERTH" create "$E" --template busybox --disk 64M --ip 198.18.0.40 >/dev/null
    "$BERTH" start "$E" >/dev/null
    local monitor; monitor=$(sed -n 's/^monitor=//p' "$WORK/run/$E/state")
    kill -9 "$monitor"
    for _ in $(seq 100); do "$BERTH" status "$E" | grep -q running || break; sleep 0.05; done
    for _ in $(seq 50); do in_node ip -o link | grep -q " bv-$E" || break; sleep 0.1; done
    in_node ip -o link | grep -q " bv-$E" && fail "link left after the monitor died"
    in_node ip neigh show proxy | grep -q 198.18.0.40 && fail "proxy entry left after the monitor died"
    in_node nft list ruleset | grep -q "\"bv-$E\"" && fail "filter elements left after the monitor died"
    # Agent killed while a start is in flight: the helper finishes on its own; the new agent
    # re-adopts a running VPS (reachable) or finds it stopped with nothing left.
    "$BERTH" start "$E" >/dev/null 2>&1 &
    sleep 0.05
    agent_kill9
    sleep 1
    agent_start
    if "$BERTH" status "$E" | grep -q running; then
        in_lan busybox ping -c1 -W2 198.18.0.40 >/dev/null || fail "re-adopted VPS unreachable"
    else
        in_node nft list ruleset | grep -q "\"bv-$E\"" && fail "filter elements left after an interrupted start"
    fi
    "$BERTH" destroy "$E" --force >/dev/null
    for _ in $(seq 50); do in_node ip -o link | grep -q " bv-$E" || break; sleep 0.1; done
    in_node ip -o link | grep -q " bv-$E" && fail "link left after destroy"
    in_node ip neigh show proxy | grep -q 198.18.0.40 && fail "proxy entry left after destroy"
    true
}

t_net_live_ip_add_del() {
    "$BERTH" set "$A" --ip-add 198.18.0.20 --ip-add fd00:b17::20 | grep -q "applied live: .*ip" || fail "ip change not applied live"
    in_lan busybox ping -c1 -W2 198.18.0.20 >/dev/null || fail "added IPv4 unreachable"
    in_lan busybox ping6 -c1 -W2 fd00:b17::20 >/dev/null || fail "added IPv6 unreachable"
    "$BERTH" set "$A" --ip-del 198.18.0.20 --ip-del fd00:b17::20 >/dev/null
    in_lan busybox ping -c1 -W1 198.18.0.20 >/dev/null 2>&1 && fail "removed address still answers"
    "$BERTH" exec "$A" -- ip addr | grep -q 198.18.0.20 && fail "removed address still on eth0"
    in_node ip route | grep -q 198.18.0.20 && fail "host route of the removed address remains"
    in_node ip neigh show proxy | grep -q 198.18.0.20 && fail "proxy entry of the removed address remains"
    in_node nft list set inet berth src4 | grep -q 198.18.0.20 && fail "filter element of the removed address remains"
    # A VPS cannot reuse the removed address's old sender rights.
    "$BERTH" exec "$A" -- ip addr add 198.18.0.20/32 dev eth0
    "$BERTH" exec "$A" -- ping -c1 -W1 -I 198.18.0.20 $LAN4 >/dev/null 2>&1 && fail "removed address still allowed as source"
    "$BERTH" exec "$A" -- ip addr del 198.18.0.20/32 dev eth0
    # Added addresses survive a reboot inside.
    "$BERTH" set "$A" --ip-add 198.18.0.21 >/dev/null
    local old; old=$(vps_pid "$A")
    "$BERTH" exec "$A" -- reboot
    for _ in $(seq 100); do [ "$(vps_pid "$A")" != "$old" ] && [ "$(vps_pid "$A")" != 0 ] && break; sleep 0.1; done
    for _ in $(seq 30); do in_lan busybox ping -c1 -W1 198.18.0.21 >/dev/null 2>&1 && break; sleep 0.2; done
    in_lan busybox ping -c1 -W1 198.18.0.21 >/dev/null || fail "live-added address lost across a reboot inside"
    in_lan busybox ping -c1 -W1 $A4 >/dev/null || fail "A unreachable after reboot"
    "$BERTH" set "$A" --ip-del 198.18.0.21 >/dev/null
}

t_net_survives_agent_restart() {
    agent_kill9
    in_lan busybox ping -c1 -W2 $A4 >/dev/null || fail "A unreachable while the agent is down"
    agent_start
    in_lan busybox ping -c1 -W2 $A4 >/dev/null || fail "A unreachable after agent restart"
    in_lan busybox ping6 -c1 -W2 $B6 >/dev/null || fail "B unreachable after agent restart"
    in_node nft list set inet berth src4 | grep -q "\"bv-$A\" . [0-9a-f:]* . $A4" || fail "A's filter element is gone after the restart"
    expect_contains "$(in_node ip route show proto 183)" "$A4 dev bv-$A"
    agent_stop
    agent_start
    "$BERTH" exec "$A" -- ping -c1 -W2 $B4 >/dev/null || fail "A cannot reach B after a graceful agent restart"
}

t_net_bridged() {
    "$BERTH" create "$C" --template busybox --disk 64M --net bridged:br-lan --ip $C4 --ip fd00:b17:1::10 >/dev/null
    "$BERTH" start "$C" >/dev/null
    expect_contains "$("$BERTH" status "$C")" "net=bridged:br-lan"
    expect_contains "$(in_node ip link show "bv-$C")" "master br-lan"
    expect_contains "$("$BERTH" exec "$C" -- ip -o addr show dev eth0)" "$C4/24"
    "$BERTH" exec "$C" -- ping -c1 -W2 198.18.1.100 >/dev/null || fail "bridged VPS cannot reach its LAN"
    "$BERTH" exec "$C" -- ping6 -c1 -W2 fd00:b17:1::100 >/dev/null || fail "bridged VPS cannot reach its LAN over IPv6"
    in_lan2 busybox ping -c1 -W2 $C4 >/dev/null || fail "LAN cannot reach the bridged VPS"
    # Through the node's gateway on the bridge to the routed VPSs.
    "$BERTH" exec "$C" -- ping -c1 -W2 $A4 >/dev/null || fail "bridged VPS cannot reach a routed one via the gateway"
    local before; before=$(spoofed_count bridge)
    "$BERTH" exec "$C" -- ip addr add 198.18.1.11/24 dev eth0
    "$BERTH" exec "$C" -- ping -c1 -W1 -I 198.18.1.11 198.18.1.100 >/dev/null 2>&1 && fail "bridged VPS sent from a foreign address"
    "$BERTH" exec "$C" -- ip addr del 198.18.1.11/24 dev eth0
    "$BERTH" exec "$C" -- ip link set eth0 address 02:00:00:00:00:99
    "$BERTH" exec "$C" -- ping -c1 -W1 198.18.1.100 >/dev/null 2>&1 && fail "bridged VPS sent with a foreign MAC"
    local after; after=$(spoofed_count bridge)
    [ "$after" -gt "$before" ] || fail "bridge filter counted nothing ($before -> $after)"
    "$BERTH" destroy "$C" --force >/dev/null
}

t_net_bad_input() {
    local D; D=$(vps_name d)
    expect_contains "$(expect_fail 2 "$BERTH" create "$D" --template busybox --ip 010.0.0.1)" "leading zero"
    expect_contains "$(expect_fail 2 "$BERTH" create "$D" --template busybox --ip 0.0.0.0)" "unspecified"
    expect_contains "$(expect_fail 2 "$BERTH" create "$D" --template busybox --ip 127.0.0.1)" "loopback"
    expect_contains "$(expect_fail 2 "$BERTH" create "$D" --template busybox --ip 224.0.0.5)" "multicast"
    expect_contains "$(expect_fail 2 "$BERTH" create "$D" --template busybox --ip ff02::1)" "multicast"
    expect_contains "$(expect_fail 2 "$BERTH" create "$D" --template busybox --ip 198.18.7.1)" "outside this node's address ranges"
    expect_contains "$(expect_fail 2 "$BERTH" create "$D" --template busybox --ip 198.18.0.1.2)" "not a valid IPv4"
    expect_contains "$(expect_fail 4 "$BERTH" create "$D" --template busybox --ip $A4)" "already used by VPS $A"
    expect_contains "$(expect_fail 2 "$BERTH" create "$D" --template busybox --ip 198.18.0.30 --ip 198.18.0.30)" "given twice"
    expect_contains "$(expect_fail 2 "$BERTH" create "$D" --template busybox --net bridged:nope)" "not in this node's network.bridges"
    expect_contains "$(expect_fail 2 "$BERTH" create "$D" --template busybox --nameserver 1.2.3)" "nameserver"
    expect_contains "$(expect_fail 2 "$BERTH" set "$A" --ip-del 198.18.0.77)" "is not an address of VPS"
    expect_contains "$(expect_fail 4 "$BERTH" set "$A" --ip-add $B4)" "already used by VPS $B"
    "$BERTH" status "$D" >/dev/null 2>&1 && fail "a refused create left a VPS"
    # Two VPSs asking for the same new address at once: exactly one gets it.
    "$BERTH" set "$A" --ip-add 198.18.0.50 >"$WORK/race-a" 2>&1 & local ra=$!
    "$BERTH" set "$B" --ip-add 198.18.0.50 >"$WORK/race-b" 2>&1 & local rb=$!
    local wins=0; wait $ra && wins=$((wins + 1)); wait $rb && wins=$((wins + 1))
    expect_eq "$wins" 1 "(winners of a concurrent ip-add: $(cat "$WORK/race-a" "$WORK/race-b"))"
    expect_contains "$(cat "$WORK/race-a" "$WORK/race-b")" "198.18.0.50 is already used by VPS"
    "$BERTH" set "$A" --ip-del 198.18.0.50 >/dev/null 2>&1 || "$BERTH" set "$B" --ip-del 198.18.0.50 >/dev/null
    expect_contains "$("$BERTH" status "$A")" "ips=$A4,$A6 "
    # Bad node settings stop a second agent before it touches anything.
    local bad="$WORK/bad.json" out
    for case in '{"network":{"ranges":["198.18.0.0/24","198.18.0.128/25"]}}|overlaps' \
                '{"network":{"ranges":["010.0.0.0/8"]}}|leading zero' \
                '{"network":{"ranges":["198.18.0.1/24"]}}|host bits' \
                '{"network":{"ranges":["224.0.0.0/24"]}}|multicast' \
                '{"network":{"ranges":["127.0.0.0/8"]}}|loopback' \
                '{"network":{"ranges":["198.18.0.0/24"],"uplnk":"x"}}|network.uplnk' \
                '{"network":{"ranges":["198.18.0.0/24"],"bridges":[{"name":"b","gateway4":"198.19.0.1"}]}}|network.bridges[0].gateway4' \
                '{"network":{"ranges":[]}}|network.ranges'; do
        echo "${case%%|*}" >"$bad"
        out=$("$BUILD/berth-agent" --config "$bad" --data-dir "$WORK/bad-data" --run-dir "$WORK/bad-run" --socket "$WORK/bad.sock" 2>&1) && fail "agent accepted ${case%%|*}"
        expect_contains "$out" "${case#*|}"
    done
    [ ! -e "$WORK/bad.sock" ] || fail "a refused agent opened its socket"
}

t_net_files_symlink_safe() {
    # The VPS root plants a symlink and a FIFO where the host writes; the host replaces them
    # with regular files and never follows or opens them.
    "$BERTH" exec "$A" -- sh -c 'cp /etc/passwd /tmp/passwd.orig; ln -sf /etc/passwd /etc/resolv.conf; rm /etc/hosts; mkfifo /etc/hosts'
    timeout 10 "$BERTH" set "$A" --nameserver 198.18.0.54 --hostname a-renamed >/dev/null || fail "set failed or hung on a FIFO"
    "$BERTH" exec "$A" -- cmp /etc/passwd /tmp/passwd.orig || fail "/etc/passwd was written through the symlink"
    "$BERTH" exec "$A" -- sh -c 'test -f /etc/resolv.conf && test ! -L /etc/resolv.conf && test -f /etc/hosts && test ! -p /etc/hosts' || fail "files not replaced"
    expect_contains "$("$BERTH" exec "$A" -- cat /etc/resolv.conf)" "nameserver 198.18.0.54"
    expect_eq "$("$BERTH" exec "$A" -- hostname)" a-renamed
    expect_contains "$("$BERTH" exec "$A" -- cat /etc/hosts)" "a-renamed"
    "$BERTH" set "$A" --hostname "$A" >/dev/null
}

t_net_destroy_leaves_nothing() {
    "$BERTH" destroy "$A" --force >/dev/null
    "$BERTH" destroy "$B" --force >/dev/null
    for _ in $(seq 50); do in_node ip -o link | grep -q ' bv-' || break; sleep 0.1; done
    expect_eq "$(in_node ip -o link | grep -c ' bv-')" 0 "(host links left)"
    expect_eq "$(in_node ip route show proto 183; in_node ip -6 route show proto 183)" "" "(routes left)"
    expect_eq "$(in_node ip neigh show proxy; in_node ip -6 neigh show proxy)" "" "(proxy entries left)"
    expect_eq "$(in_node nft list ruleset | grep -c '"bv-[^*]')" 0 "(filter elements left: $(in_node nft list ruleset | grep '"bv-[^*]'))"
    expect_eq "$(leftovers_of "$A")$(leftovers_of "$B")" ""
}

run_test "routed VPSs: addresses, routes, neighbours, proxy entries, resolver" t_net_create_start
run_test "ICMP between VPSs and the LAN, IPv4 and IPv6" t_net_reach_icmp
run_test "TCP and UDP between VPSs and the LAN, IPv4 and IPv6" t_net_reach_tcp_udp
run_test "a VPS sending from another's address gets nothing through" t_net_ip_spoofing_dropped
run_test "ARP, NDP, RA and MAC spoofs leave the node's tables unchanged" t_net_arp_ndp_ra_spoofing
run_test "a capture inside A sees none of B's or the LAN's traffic" t_net_no_sniffing
run_test "a VPS's own firewall, sysctls and routes stay in its namespace" t_net_firewall_and_sysctls_inside
run_test "services on the node are closed to VPSs (gateway and uplink address)" t_net_node_services_unreachable
run_test "set --ip-add/--ip-del live; added addresses survive a reboot inside" t_net_live_ip_add_del
run_test "addresses and routes survive agent kill -9 and restart" t_net_survives_agent_restart
run_test "bridged mode with MAC and IP filtering" t_net_bridged
run_test "a killed monitor or agent mid-start leaves no filter element, proxy entry or link" t_net_monitor_crash_cleanup
run_test "bad addresses and node settings: clear errors, nothing applied" t_net_bad_input
run_test "/etc files: symlinks and FIFOs planted in the VPS are replaced, never followed" t_net_files_symlink_safe
run_test "destroy leaves no link, route, proxy entry or filter element" t_net_destroy_leaves_nothing

echo
[ ${#FAILED_NAMES[@]} -eq 0 ] || printf 'failed: %s\n' "${FAILED_NAMES[@]}"
echo "network: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ]
