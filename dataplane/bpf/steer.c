// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Sluice XDP steering program.
 *
 * Sends only load-balancer traffic to the AF_XDP sockets and passes
 * everything else (ARP, ICMP, SSH, routing protocols, ...) to the kernel.
 *
 * A frame is redirected to the AF_XDP socket of its receive queue
 * (XSKMAP `xsks`, indexed by ctx->rx_queue_index) when it is TCP, UDP or
 * SCTP over IPv4 or IPv6 and
 *   (a) (dst addr, dst port, proto) is in `vips`            (client → VIP), or
 *   (b) (src addr, src port, proto) is in `backends`        (endpoint → LB), or
 *   (c) dst addr is in `snat_addrs` and the dst port lies in
 *       [snat_range.lo, snat_range.hi]                     (reply to a SNATed flow).
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
 * `snat_addrs` keys are the 16 address bytes alone (value: any byte).
 * `snat_range[0]` holds lo and hi as two u16 in HOST byte order (compared
 * after bpf_ntohs); hi == 0 (the initial all-zero value) or lo > hi disables
 * rule (c). Values of `vips` and `backends` are one byte, ignored.
 * `stats` is a per-CPU array of u64: [0] redirected, [1] passed.
 *
 * Parsing: Ethernet, at most one 802.1Q/802.1ad tag, IPv4 (options skipped
 * through IHL; non-first fragments pass, they carry no ports) and IPv6 with
 * the L4 header as the first next header (extension headers pass).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES 256
#define MAX_VIPS 65536
#define MAX_BACKENDS 65536
#define MAX_SNAT_ADDRS 256

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

struct l4_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct port_range {
	__u16 lo;
	__u16 hi;
};

enum {
	STAT_REDIRECTED = 0,
	STAT_PASSED = 1,
	STAT_MAX = 2,
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
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct port_range);
} snat_range SEC(".maps");

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

/* The first four bytes of TCP, UDP and SCTP headers are the ports. */
struct ports {
	__be16 src;
	__be16 dst;
};

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
	__u32 zero = 0;
	struct port_range *r;

	/* (a) to a VIP */
	__builtin_memcpy(k.addr, daddr, 16);
	k.port = p->dst;
	k.proto = proto;
	k.pad = 0;
	if (bpf_map_lookup_elem(&vips, &k))
		return 1;

	/* (b) from an endpoint */
	__builtin_memcpy(k.addr, saddr, 16);
	k.port = p->src;
	if (bpf_map_lookup_elem(&backends, &k))
		return 1;

	/* (c) reply to a masqueraded flow */
	r = bpf_map_lookup_elem(&snat_range, &zero);
	if (r && r->lo <= r->hi && r->hi != 0) {
		__u16 dport = bpf_ntohs(p->dst);

		if (dport >= r->lo && dport <= r->hi &&
		    bpf_map_lookup_elem(&snat_addrs, daddr))
			return 1;
	}
	return 0;
}

SEC("xdp")
int sluice_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 saddr[16], daddr[16];
	struct ports *p;
	__be16 h_proto;
	void *l3;
	__u8 proto;
	int ret;

	if ((void *)(eth + 1) > data_end)
		return count(STAT_PASSED, XDP_PASS);
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
		/* Non-first fragments carry no L4 header. */
		if (ip->frag_off & bpf_htons(IP_OFFSET))
			return count(STAT_PASSED, XDP_PASS);
		proto = ip->protocol;
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
		__builtin_memcpy(saddr, &ip6->saddr, 16);
		__builtin_memcpy(daddr, &ip6->daddr, 16);
		p = (void *)(ip6 + 1);
	} else {
		return count(STAT_PASSED, XDP_PASS);
	}

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP)
		return count(STAT_PASSED, XDP_PASS);
	if ((void *)(p + 1) > data_end)
		return count(STAT_PASSED, XDP_PASS);

	if (!is_lb_traffic(saddr, daddr, p, proto))
		return count(STAT_PASSED, XDP_PASS);

	/* Falls back to XDP_PASS when no socket is bound on this queue. */
	ret = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	return count(ret == XDP_REDIRECT ? STAT_REDIRECTED : STAT_PASSED, ret);
}

char _license[] SEC("license") = "Dual BSD/GPL";
