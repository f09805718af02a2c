// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Sluice XDP steering program.
 *
 * Sends only load-balancer traffic (and ICMP errors about it) to the AF_XDP
 * sockets and passes everything else (ARP, ping, neighbour discovery, SSH,
 * routing protocols, the host's own connections, fragments, ...) to the
 * kernel. What it redirects and what the workers' parser
 * (dataplane/src/wire/parse.rs) accepts follow one case table, in the
 * module doc of dataplane/src/steer.rs: this program finds the L4 header
 * exactly where the parser does, and judges a frame by its addresses and
 * ports only; whether a redirected frame is well-formed (checksums, options,
 * TCP flags, tags, routing headers) is the parser's and the pipeline's to
 * decide, which drop and count what they refuse.
 *
 * A frame is redirected to the AF_XDP socket of its receive queue
 * (XSKMAP `xsks`, indexed by ctx->rx_queue_index) when it is TCP, UDP or
 * SCTP over IPv4 or IPv6 and
 *   (a) (dst addr, dst port, proto) is in `vips`            (client -> VIP), or
 *   (b) (src addr, src port, proto) is in `backends` and dst addr is not
 *       in `local_addrs`           (endpoint -> client, not masqueraded), or
 *   (c) dst addr is in `snat_addrs`, the dst port lies in one of the ranges
 *       [lo, hi] of `snat_range`, and (src addr, src port, proto) is in
 *       `backends`                          (reply to a masqueraded flow).
 * Rule (b) leaves out replies to the host's own connections (health checks,
 * an operator's curl to an endpoint): those go to one of the host's
 * addresses, and a flow of Sluice's only ever gets a reply at a host
 * address when it is masqueraded, i.e. at a SNAT address with a port in the
 * SNAT ranges, which (c) matches. The SNAT ranges lie outside the kernel's
 * ip_local_port_range, so the host's own ports never fall in them; and (c)
 * asks for an endpoint's source address:port too, so a client reaching a
 * service of the host's own on a port inside the SNAT ranges (a health
 * check node port, the metrics port) is not taken either.
 *
 * An ICMP error (IPv4: destination unreachable 3, time exceeded 11,
 * parameter problem 12; ICMPv6: destination unreachable 1, packet too big 2,
 * time exceeded 3, parameter problem 4) is redirected when the packet it
 * quotes -- one the load balancer or a client sent -- belongs to such a
 * flow, judged with the same rules in the reverse sense, i.e. when the
 * quoted packet, reversed, would match (a), (b) or (c). The quote must hold
 * the inner IP header (of the outer family; IPv4 with IHL, first fragment
 * only; IPv6 with at most MAX_INNER_EXT extension headers before TCP, UDP or
 * SCTP) and 8 bytes of the inner L4 header. Every other ICMP/ICMPv6 message
 * (echo, neighbour discovery, router advertisements, errors about host
 * traffic) and ICMP in an IPv4 fragment passes to the kernel.
 *
 * Parsing, as the parser does: Ethernet with at most one tag (802.1Q or
 * 802.1ad; a frame with two tags is not IP here and passes); IPv4 with its
 * options skipped through IHL; IPv6 with up to MAX_EXT Hop-by-Hop,
 * Routing and Destination Options headers skipped (more than that passes).
 * Fragments (IPv4: MF set or a non-zero offset; IPv6: a Fragment header
 * after the skipped extension headers) of TCP and UDP. Only the first
 * (offset 0) carries ports, and the fragments of one datagram must not be
 * split between Sluice and the kernel, so:
 *   - a first fragment is judged by its ports like a whole packet, by
 *     (a), (b) and (c) (IPv6: the L4 header right after the Fragment
 *     header); when it is redirected, its datagram's key (source,
 *     destination, IP identification, protocol) goes into the LRU map
 *     `frags`, counted in stats[4];
 *   - a later fragment is redirected when its key is in `frags` (its first
 *     was: the later ones follow it, also counted in stats[4]), and
 *     otherwise passes, counted in stats[3].
 * The kernel fragments a datagram in order and one datagram's fragments
 * reach one receive queue (one CPU), so the first is judged before the
 * others. A later fragment that overtakes its first goes to the kernel,
 * as does the whole datagram of a host's own connection. Fragments of
 * other protocols (ICMP, SCTP) pass. An IPv6 atomic fragment (offset 0, M
 * clear) is judged as a whole packet and not remembered.
 *
 * If no socket is registered for the queue, bpf_redirect_map falls back to
 * XDP_PASS (kernel >= 5.3), so the kernel never loses a frame to a missing
 * socket.
 *
 * Key layout shared with dataplane/src/steer.rs (20 bytes, no implicit
 * padding):
 *   bytes 0..16  address, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d, RFC 4291
 *                § 2.5.5.2), same as types::Addr
 *   bytes 16..18 port in NETWORK byte order (copied from the L4 header as is)
 *   byte  18     IP protocol number
 *   byte  19     zero
 * `snat_addrs` and `local_addrs` keys are the 16 address bytes alone
 * (value: any byte).
 * `snat_range[0..MAX_SNAT_RANGES]` each hold lo and hi as two u16 in HOST
 * byte order (compared after bpf_ntohs); an entry with hi == 0 (the initial
 * all-zero value) or lo > hi is unused, and with all unused rule (c) is off.
 * Values of `vips` and `backends` are one byte, ignored.
 * `stats` is a per-CPU array of u64: [0] redirected, [1] passed, [2] ICMP
 * errors redirected (also counted in [0]), [3] fragments passed (also
 * counted in [1]), [4] fragments redirected (also counted in [0]), [5]
 * unicast frames for another MAC (also counted in [1]), [6] frames dropped
 * for their destination in a service range (below; in neither [0] nor [1]).
 *
 * Destination MAC: only a unicast frame addressed to the interface's own
 * MAC (`own_mac`, written by the loader from the link's address) is judged
 * at all. A broadcast or multicast frame (I/G bit set) passes: ARP and
 * neighbour discovery, which the kernel needs, never match the rules
 * anyway, and no load-balancer flow is addressed to a group MAC. A unicast
 * frame for another MAC passes too, counted in stats[5]: the kernel drops
 * it as PACKET_OTHERHOST. Such frames reach the interface when a switch
 * floods unknown unicast -- in a tier, the frames for a host whose MAC
 * the bridge forgot (it was cut off, it died) reach every other host on
 * the segment -- and without the check every one of those hosts would
 * forward them: one client segment, several copies at the backend. XDP
 * runs before the kernel's own check (eth_type_trans), so the program
 * must make it. With `own_mac` unset (all zero) the check is off.
 * `frags` keys are struct frag_key (40 bytes, no implicit padding); the
 * user space never reads them.
 *
 * Direct-routing services (forwarding method dr): the client's packets
 * match (a) as for NAT. The backend answers the client directly, from
 * VIP:port to client:port, and that reply must reach the kernel (which
 * routes it when the LB host is also the backends' router): it matches
 * no rule, because the control plane puts only NAT endpoints in
 * `backends` (a DR endpoint's own address never carries LB traffic), a
 * client is neither a VIP nor a SNAT address, and rule (b) looks at the
 * source's (addr, port, proto), which for a DR reply is the VIP's, not an
 * endpoint's. An ICMP error about such a reply (quoting VIP -> client) is
 * steered by (b'), and the workers hand it to the backend that owns the
 * VIP, unchanged but for the MACs.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES 256
/* 100k Services with a front end each must fit; entries are allocated as
 * they are added (BPF_F_NO_PREALLOC), so the bound costs no memory. */
#define MAX_VIPS 262144
#define MAX_BACKENDS 65536
#define MAX_SNAT_ADDRS 256
#define MAX_LOCAL_ADDRS 4096
/* IPv6 extension headers skipped in a packet (parse.rs MAX_IPV6_EXT_HEADERS)
 * and in the packet an ICMPv6 error quotes (icmp_error.rs
 * MAX_INNER_EXT_HEADERS). */
#define MAX_EXT 8
#define MAX_INNER_EXT 4
#define MAX_SNAT_RANGES 8

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif
#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

/* IPv6 next-header values (RFC 8200 § 4). */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60

#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_PARAMPROB 4

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
/* Datagrams whose later fragments are followed at once (LRU: the oldest
 * go first; the data path forgets its own after 30 s). */
#define MAX_FRAGS 16384

struct l4_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* A datagram, as its fragments share it (RFC 791 § 3.2, RFC 8200 § 4.5). */
struct frag_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be32 id;
	__u8 proto;
	__u8 pad[3];
};

/* The IPv6 Fragment header (RFC 8200 § 4.5). */
struct frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 off_m;
	__be32 id;
};

struct port_range {
	__u16 lo;
	__u16 hi;
};

enum {
	STAT_REDIRECTED = 0,
	STAT_PASSED = 1,
	STAT_ICMP_REDIRECTED = 2,
	STAT_FRAGMENT_PASSED = 3,
	STAT_FRAGMENT_REDIRECTED = 4,
	STAT_OTHER_HOST = 5,
	STAT_SERVICE_RANGE_DROPPED = 6,
	STAT_MAX = 7,
};

/* The interface's own MAC (`own_mac`, set by the loader; `set` 0 turns the
 * check off). */
struct own_mac {
	__u8 mac[6];
	__u8 set;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct l4_key);
	__type(value, __u8);
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, struct l4_key);
	__type(value, __u8);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SNAT_ADDRS);
	__type(key, __u8[16]);
	__type(value, __u8);
} snat_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LOCAL_ADDRS);
	__type(key, __u8[16]);
	__type(value, __u8);
} local_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SNAT_RANGES);
	__type(key, __u32);
	__type(value, struct port_range);
} snat_range SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct own_mac);
} own_mac SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FRAGS);
	__type(key, struct frag_key);
	__type(value, __u8);
} frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* One tagged Ethernet header (802.1Q / 802.1ad). */
struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* The generic start of Hop-by-Hop, Routing and Destination Options headers
 * (RFC 8200 § 4.3-4.6): next header, length in 8-byte units not counting
 * the first 8. */
struct ext_hdr {
	__u8 nexthdr;
	__u8 hdrlen;
};

/* The first four bytes of TCP, UDP and SCTP headers are the ports. */
struct ports {
	__be16 src;
	__be16 dst;
};

/* The first eight bytes of TCP, UDP and SCTP headers, which an ICMP error
 * quotes at least (RFC 792, RFC 4443 § 3). */
struct l4_head8 {
	struct ports p;
	__be32 more;
};

/* The ICMP / ICMPv6 header: type, code, checksum, four more bytes. */
struct icmp_head {
	__u8 type;
	__u8 code;
	__be16 csum;
	__be32 rest;
};

/* Byte by byte: BPF has no memcmp. */
static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) |
		(a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

static __always_inline int count(__u32 idx, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &idx);

	if (c)
		*c += 1;
	return verdict;
}

static __always_inline void v4_mapped(__u8 out[16], __be32 a)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(&out[12], &a, 4);
}

static __always_inline int is_lb_traffic(const __u8 saddr[16], const __u8 daddr[16],
					 const struct ports *p, __u8 proto)
{
	struct l4_key k = {};
	struct port_range *r;

	/* (a) to a VIP */
	__builtin_memcpy(k.addr, daddr, 16);
	k.port = p->dst;
	k.proto = proto;
	k.pad = 0;
	if (bpf_map_lookup_elem(&vips, &k))
		return 1;

	/* (b) from an endpoint to a client; a reply to one of the host's own
	 * addresses is Sluice's only through (c) */
	__builtin_memcpy(k.addr, saddr, 16);
	k.port = p->src;
	if (!bpf_map_lookup_elem(&backends, &k))
		return 0;
	if (!bpf_map_lookup_elem(&local_addrs, daddr))
		return 1;

	/* (c) from an endpoint, a reply to a masqueraded flow */
	if (bpf_map_lookup_elem(&snat_addrs, daddr)) {
		__u16 dport = bpf_ntohs(p->dst);

		/* Unrolled: the key's address goes to the helper, so a loop
		 * counter would live on the stack, unbounded to the verifier. */
#pragma unroll
		for (int i = 0; i < MAX_SNAT_RANGES; i++) {
			__u32 key = i;

			r = bpf_map_lookup_elem(&snat_range, &key);
			if (r && r->hi != 0 && dport >= r->lo && dport <= r->hi)
				return 1;
		}
	}
	return 0;
}

static __always_inline int is_l4_proto(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

static __always_inline int is_ext_hdr(__u8 nh)
{
	return nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_DEST;
}

/*
 * Skips up to `max` IPv6 extension headers of the generic layout starting
 * at `cur`, whose type is *nexthdr. Returns the header after them, with its
 * type in *nexthdr, or 0 when a header runs past the frame or more than
 * `max` follow one another (the parser refuses those, so they pass).
 */
static __always_inline void *skip_ext_hdrs(void *cur, void *data_end, __u8 *nexthdr,
					   const int max)
{
	int i;

	for (i = 0; i < max; i++) {
		struct ext_hdr *eh = cur;

		if (!is_ext_hdr(*nexthdr))
			return cur;
		if ((void *)(eh + 1) > data_end)
			return 0;
		*nexthdr = eh->nexthdr;
		cur += ((__u32)eh->hdrlen + 1) * 8;
	}
	return is_ext_hdr(*nexthdr) ? 0 : cur;
}

/*
 * Whether the ICMP (v6 == 0) or ICMPv6 (v6 == 1) message at `icmp` is an
 * error quoting a load-balancer packet: rules (a'), (b'), (c') above, i.e.
 * the quoted packet reversed is LB traffic.
 */
static __always_inline int is_lb_icmp_error(void *icmp, void *data_end, int v6)
{
	struct icmp_head *ih = icmp;
	__u8 qsaddr[16], qdaddr[16];
	struct l4_head8 *q;
	struct ports rev;
	__u8 proto;

	if ((void *)(ih + 1) > data_end)
		return 0;
	if (v6) {
		struct ipv6hdr *in6 = (void *)(ih + 1);

		if (ih->type != ICMPV6_DEST_UNREACH && ih->type != ICMPV6_PKT_TOOBIG &&
		    ih->type != ICMPV6_TIME_EXCEED && ih->type != ICMPV6_PARAMPROB)
			return 0;
		if ((void *)(in6 + 1) > data_end)
			return 0;
		if (in6->version != 6)
			return 0;
		proto = in6->nexthdr;
		__builtin_memcpy(qsaddr, &in6->saddr, 16);
		__builtin_memcpy(qdaddr, &in6->daddr, 16);
		q = skip_ext_hdrs((void *)(in6 + 1), data_end, &proto, MAX_INNER_EXT);
		if (!q)
			return 0;
	} else {
		struct iphdr *in = (void *)(ih + 1);
		__u32 ihl;

		if (ih->type != ICMP_DEST_UNREACH && ih->type != ICMP_TIME_EXCEEDED &&
		    ih->type != ICMP_PARAMETERPROB)
			return 0;
		if ((void *)(in + 1) > data_end)
			return 0;
		ihl = in->ihl * 4;
		if (in->version != 4 || ihl < sizeof(*in))
			return 0;
		/* A non-first fragment quotes no ports. */
		if (in->frag_off & bpf_htons(IP_OFFSET))
			return 0;
		proto = in->protocol;
		v4_mapped(qsaddr, in->saddr);
		v4_mapped(qdaddr, in->daddr);
		q = (void *)in + ihl;
	}
	if (!is_l4_proto(proto))
		return 0;
	if ((void *)(q + 1) > data_end)
		return 0;

	/* The quoted packet went from us (or a client) to qdaddr; reversed,
	 * it is a packet from qdaddr to qsaddr. */
	rev.src = q->p.dst;
	rev.dst = q->p.src;
	return is_lb_traffic(qdaddr, qsaddr, &rev, proto);
}

/*
 * Service ranges (`sluice run --service-cidr`; dataplane/src/steer.rs
 * "Service ranges" has the why). kube-proxy's nftables `cluster-ips-check`
 * chain: a packet to an address inside a service range that no front end
 * matched is dropped; to a ClusterIP (a /128 entry of class RANGE_REJECT)
 * it is sent to the workers, which answer ICMP port unreachable. Judged only
 * after the exact rules (a)-(c) and the ICMP-error rules missed, so
 * the cost for other packets is this one trie lookup, and none at all when
 * the loader left `service_ranges_on` 0 (a read-only global: the verifier
 * prunes the block).
 * Keys: prefix length over the IPv4-mapped 128-bit form, then the address.
 */
#define SERVICE_RANGES_MAX (MAX_VIPS + 64)
#include "ranges.h"

/* -1: not in a service range (or the rule is off); else the verdict.
 * `answerable`: a whole TCP/UDP/SCTP packet, which the workers can reject;
 * anything else in a range (ICMP echo, other protocols, first fragments)
 * is dropped. */
static __always_inline int service_range(struct xdp_md *ctx, const __u8 daddr[16], int answerable)
{
	struct range_key k;
	__u8 *cls;
	int ret;

	if (!service_ranges_on)
		return -1;
	k.prefixlen = 128;
	__builtin_memcpy(k.addr, daddr, 16);
	cls = bpf_map_lookup_elem(&service_ranges, &k);
	if (!cls)
		return -1;
	if (*cls == RANGE_REJECT && answerable) {
		ret = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP);
		if (ret == XDP_REDIRECT)
			return count(STAT_REDIRECTED, ret);
	}
	return count(STAT_SERVICE_RANGE_DROPPED, XDP_DROP);
}

#include "fastpath.h"

SEC("xdp")
int sluice_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 saddr[16], daddr[16];
	struct frag_key fk = {};
	int first_frag = 0;
	struct ports *p;
	__be16 h_proto;
	void *icmp = 0;
	int icmp_v6 = 0;
	void *l3;
	__u8 proto;
	int ret;

	if ((void *)(eth + 1) > data_end)
		return count(STAT_PASSED, XDP_PASS);
	/* Only frames addressed to this interface: see the header comment. */
	if (eth->h_dest[0] & 1)
		return count(STAT_PASSED, XDP_PASS);
	{
		__u32 zero = 0;
		struct own_mac *m = bpf_map_lookup_elem(&own_mac, &zero);

		if (m && m->set && !mac_eq(eth->h_dest, m->mac)) {
			count(STAT_OTHER_HOST, 0);
			return count(STAT_PASSED, XDP_PASS);
		}
	}
	h_proto = eth->h_proto;
	l3 = eth + 1;

	if (h_proto == bpf_htons(ETH_P_8021Q) || h_proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = l3;

		if ((void *)(vh + 1) > data_end)
			return count(STAT_PASSED, XDP_PASS);
		h_proto = vh->encap_proto;
		l3 = vh + 1;
	}

	if (h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		__u32 ihl;

		if ((void *)(ip + 1) > data_end)
			return count(STAT_PASSED, XDP_PASS);
		ihl = ip->ihl * 4;
		if (ip->version != 4 || ihl < sizeof(*ip))
			return count(STAT_PASSED, XDP_PASS);
		proto = ip->protocol;
		/* Fragments: see the header comment. */
		if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
			v4_mapped(fk.saddr, ip->saddr);
			v4_mapped(fk.daddr, ip->daddr);
			fk.id = ip->id;
			fk.proto = proto;
			if (ip->frag_off & bpf_htons(IP_OFFSET))
				goto later_fragment;
			if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
				goto fragment;
			first_frag = 1;
		}
		/* ICMP: only errors about LB flows. */
		if (proto == IPPROTO_ICMP) {
			icmp = (void *)ip + ihl;
			v4_mapped(daddr, ip->daddr);
			goto icmp_error;
		}
		v4_mapped(saddr, ip->saddr);
		v4_mapped(daddr, ip->daddr);
		p = (void *)ip + ihl;
	} else if (h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end)
			return count(STAT_PASSED, XDP_PASS);
		if (ip6->version != 6)
			return count(STAT_PASSED, XDP_PASS);
		proto = ip6->nexthdr;
		p = skip_ext_hdrs((void *)(ip6 + 1), data_end, &proto, MAX_EXT);
		if (!p)
			return count(STAT_PASSED, XDP_PASS);
		if (proto == NEXTHDR_FRAGMENT) {
			struct frag_hdr *fh = (void *)p;

			if ((void *)(fh + 1) > data_end)
				goto fragment;
			__builtin_memcpy(fk.saddr, &ip6->saddr, 16);
			__builtin_memcpy(fk.daddr, &ip6->daddr, 16);
			fk.id = fh->id;
			fk.proto = fh->nexthdr;
			proto = fh->nexthdr;
			p = (void *)(fh + 1);
			if (fh->off_m & bpf_htons(0xfff8))
				goto later_fragment;
			if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
				goto fragment;
			/* M clear: an atomic fragment, a whole packet. */
			first_frag = (fh->off_m & bpf_htons(1)) != 0;
		}
		if (proto == IPPROTO_ICMPV6) {
			icmp = p;
			icmp_v6 = 1;
			__builtin_memcpy(daddr, &ip6->daddr, 16);
			goto icmp_error;
		}
		__builtin_memcpy(saddr, &ip6->saddr, 16);
		__builtin_memcpy(daddr, &ip6->daddr, 16);
	} else {
		return count(STAT_PASSED, XDP_PASS);
	}

	if (!is_l4_proto(proto)) {
		ret = service_range(ctx, daddr, 0);
		return ret >= 0 ? ret : count(STAT_PASSED, XDP_PASS);
	}
	if ((void *)(p + 1) > data_end)
		return count(STAT_PASSED, XDP_PASS);

	/* Established flows the workers published: rewritten and sent here. */
	if (!first_frag && l3 == (void *)(eth + 1)) {
		ret = fast_path(ctx, eth, l3, p, proto, h_proto == bpf_htons(ETH_P_IPV6));
		if (ret >= 0)
			return ret;
	}

	if (!is_lb_traffic(saddr, daddr, p, proto)) {
		ret = service_range(ctx, daddr, !first_frag);
		if (ret >= 0)
			return ret;
		if (first_frag)
			goto fragment;
		return count(STAT_PASSED, XDP_PASS);
	}

	/* Falls back to XDP_PASS when no socket is bound on this queue. */
	ret = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (first_frag && ret == XDP_REDIRECT) {
		__u8 one = 1;

		bpf_map_update_elem(&frags, &fk, &one, BPF_ANY);
		count(STAT_FRAGMENT_REDIRECTED, 0);
	}
	return count(ret == XDP_REDIRECT ? STAT_REDIRECTED : STAT_PASSED, ret);

later_fragment:
	if (!bpf_map_lookup_elem(&frags, &fk))
		goto fragment;
	ret = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (ret == XDP_REDIRECT)
		count(STAT_FRAGMENT_REDIRECTED, 0);
	return count(ret == XDP_REDIRECT ? STAT_REDIRECTED : STAT_PASSED, ret);

fragment:
	count(STAT_FRAGMENT_PASSED, 0);
	return count(STAT_PASSED, XDP_PASS);

icmp_error:
	if (!is_lb_icmp_error(icmp, data_end, icmp_v6)) {
		ret = service_range(ctx, daddr, 0);
		return ret >= 0 ? ret : count(STAT_PASSED, XDP_PASS);
	}
	ret = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	if (ret == XDP_REDIRECT)
		count(STAT_ICMP_REDIRECTED, 0);
	return count(ret == XDP_REDIRECT ? STAT_REDIRECTED : STAT_PASSED, ret);
}

char _license[] SEC("license") = "Dual BSD/GPL";
