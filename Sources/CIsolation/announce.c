// Address announcements on a node's uplink after a VPS's addresses arrive there (a start, a
// migration): a gratuitous ARP for IPv4 and an unsolicited neighbour advertisement for IPv6, so
// that LAN neighbours send to this node at once instead of to the node that answered before.
// Kept in C: the interface's index and MAC come from ioctl, which Swift cannot call.
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cisolation.h"

// The uplink's index and MAC, through a throw-away socket of this network namespace.
static int interface_address(const char *ifname, int *index, unsigned char mac[6]) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, ifname, IFNAMSIZ - 1);
    int rc = ioctl(fd, SIOCGIFINDEX, &request);
    if (rc == 0) {
        *index = request.ifr_ifindex;
        rc = ioctl(fd, SIOCGIFHWADDR, &request);
        if (rc == 0) memcpy(mac, request.ifr_hwaddr.sa_data, 6);
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

int berth_announce_ipv4(const char *ifname, const unsigned char address[4]) {
    int index;
    unsigned char mac[6];
    if (interface_address(ifname, &index, mac) != 0) return -1;
    int fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_ARP));
    if (fd < 0) return -1;
    // ARP request, sender = target = the address (RFC 5227 "ARP announcement").
    unsigned char packet[28] = {0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01};
    memcpy(packet + 8, mac, 6);
    memcpy(packet + 14, address, 4);
    memset(packet + 18, 0, 6);
    memcpy(packet + 24, address, 4);
    struct sockaddr_ll to;
    memset(&to, 0, sizeof to);
    to.sll_family = AF_PACKET;
    to.sll_protocol = htons(ETH_P_ARP);
    to.sll_ifindex = index;
    to.sll_halen = 6;
    memset(to.sll_addr, 0xff, 6);
    ssize_t sent = sendto(fd, packet, sizeof packet, 0, (struct sockaddr *)&to, sizeof to);
    int saved = errno;
    close(fd);
    errno = saved;
    return sent == (ssize_t)sizeof packet ? 0 : -1;
}

int berth_announce_ipv6(const char *ifname, const unsigned char address[16]) {
    int index;
    unsigned char mac[6];
    if (interface_address(ifname, &index, mac) != 0) return -1;
    int fd = socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMPV6);
    if (fd < 0) return -1;
    int hops = 255;  // RFC 4861: neighbour discovery is only accepted with a hop limit of 255
    unsigned int ifindex = (unsigned int)index;
    if (setsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, &hops, sizeof hops) != 0 ||
        setsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_IF, &ifindex, sizeof ifindex) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    // Neighbour advertisement, Override set, not Solicited; option 2: target link-layer address.
    unsigned char packet[32] = {ND_NEIGHBOR_ADVERT, 0, 0, 0, 0x20, 0, 0, 0};
    memcpy(packet + 8, address, 16);
    packet[24] = 2;
    packet[25] = 1;
    memcpy(packet + 26, mac, 6);
    struct sockaddr_in6 to;
    memset(&to, 0, sizeof to);
    to.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "ff02::1", &to.sin6_addr);
    to.sin6_scope_id = ifindex;
    ssize_t sent = sendto(fd, packet, sizeof packet, 0, (struct sockaddr *)&to, sizeof to);
    int saved = errno;
    close(fd);
    errno = saved;
    return sent == (ssize_t)sizeof packet ? 0 : -1;
}
