// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Sluice XDP fast path (issue 13), included by steer.c.
 *
 * The AF_XDP workers do everything (parse, schedule, connection tracking,
 * state changes, ICMP errors, rejects); once a flow is established they
 * publish the rewrite of one of its directions into `fast_flows`, keyed by
 * the 5-tuple as received. A frame that hits an entry is rewritten here and
 * sent with bpf_redirect() to the egress interface, never copied into user
 * space. The rewrite is the one the workers' pipeline does for the flow
 * (dataplane/src/fastpath/rewrite.rs mirrors this code and is tested
 * against the pipeline): NAT / FULLNAT rewrite addresses and ports with
 * precomputed RFC 1624 checksum deltas; DR only the MACs; every method
 * decrements the TTL / hop limit.
 *
 * Only frames the rewrite needs no judgement for may hit: untagged, not a
 * fragment, IPv6 without extension headers, TCP without SYN, FIN or RST
 * (state changes stay with the workers) or UDP (IPv6: with a checksum),
 * TTL > 1, not larger than the egress MTU. Everything else goes the usual
 * way, to the sockets or the kernel, and so does a frame whose entry is
 * missing.
 *
 * Nor may a malformed frame hit, one that the workers' parser
 * (dataplane/src/wire/parse.rs) refuses and counts: an IPv4 header with
 * options (IHL != 5: the parser judges options, source routes among them),
 * a wrong header checksum (RFC 1122 § 3.2.1.2; an incremental rewrite would
 * make it right for the next hop), a total length (IPv6: 40 + payload
 * length) beyond the frame or short of the L4 header, a TCP data offset
 * below 5 or past the IP payload, a UDP length below 8 or past the IP
 * payload. Those go the usual way too (counted in fast_stats[3]), so that
 * a worker drops and counts them as it does without the fast path. A total
 * length short of the frame is Ethernet padding, as the parser reads it.
 *
 * Layouts shared with dataplane/src/fastpath/entry.rs (no implicit padding):
 * key, 40 bytes: src[16] dst[16] (IPv4 as IPv4-mapped IPv6), sport, dport
 * (network order), proto, pad[3] (zero).
 * value, 88 bytes: see struct fast_val. Deltas are one's-complement sums of
 * ~old + new over big-endian 16-bit words, folded, in host order.
 */
#ifndef SLUICE_FASTPATH_H
#define SLUICE_FASTPATH_H

#include <linux/tcp.h>
#include <linux/udp.h>

#define MAX_FAST_FLOWS 262144

/* fast_val.flags */
#define FAST_NAT 1 /* rewrite addresses and ports (else DR: MACs only) */

struct fast_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct fast_val {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u16 ip_delta;
	__u16 l4_delta;
	__u8 dmac[6];
	__u8 smac[6];
	__u32 ifindex;
	__u16 mtu;
	__u8 flags;
	__u8 worker; /* publisher's index, for the sweep; unused here */
	__u8 pad[4];
	__u64 last_seen;
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FAST_FLOWS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fast_key);
	__type(value, struct fast_val);
} fast_flows SEC(".maps");

/* Per-CPU: [0] hits (redirected here), [1] misses (no entry), [2] entry
 * found but the frame went the usual way (TTL, MTU, flags), [3] entry found
 * but the frame is malformed (went the usual way, to a worker that drops
 * it). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} fast_stats SEC(".maps");

static __always_inline void fast_count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&fast_stats, &idx);

	if (c)
		*c += 1;
}

/* ~(~check + delta), RFC 1624 eqn. 3, on a host-order checksum. */
static __always_inline __u16 csum_apply(__u16 check, __u32 delta)
{
	__u32 s = (__u16)~check + delta;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/*
 * Whether the 20-byte IPv4 header at `ip` (bounds checked by the caller) is
 * one the parser accepts without judging options: IHL 5, a right header
 * checksum (the one's-complement sum of its ten words is 0xffff; the sum
 * does not depend on byte order), a total length within the `len` bytes
 * from the IP header to the frame's end. Sets *l4len to the IP payload's
 * length.
 */
static __always_inline int fast_ipv4_ok(struct iphdr *ip, __u32 len, __u32 *l4len)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;
	__u32 tot;

	if (ip->ihl != 5)
		return 0;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < sizeof(*ip) || tot > len)
		return 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	if (sum != 0xffff)
		return 0;
	*l4len = tot - sizeof(*ip);
	return 1;
}

/*
 * Whether the TCP or UDP header at `l4` fits the `l4len` bytes of IP
 * payload as the parser wants: TCP data offset at least 5 and within them,
 * UDP length at least 8 and within them. (The fixed header's bounds are
 * checked again here, for the verifier.)
 */
static __always_inline int fast_l4_ok(void *l4, void *data_end, __u8 proto, __u32 l4len)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		__u32 doff;

		if ((void *)(th + 1) > data_end)
			return 0;
		doff = th->doff;
		return doff >= 5 && doff * 4 <= l4len;
	} else {
		struct udphdr *uh = l4;
		__u32 ulen;

		if ((void *)(uh + 1) > data_end)
			return 0;
		ulen = bpf_ntohs(uh->len);
		return ulen >= sizeof(*uh) && ulen <= l4len;
	}
}

/*
 * The fast path for one frame whose L4 header is at `l4` (bounds of its
 * first four bytes checked by the caller). Returns the XDP verdict when it
 * handled the frame, -1 when the frame goes the usual way.
 */
static __always_inline int fast_path(struct xdp_md *ctx, struct ethhdr *eth, void *l3,
				     void *l4, __u8 proto, int v6)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct fast_key k = {};
	struct fast_val *v;
	__be16 *l4csum;
	__u32 len;
	__u32 l4len = 0;
	__u32 ip_delta = 0;

	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return -1;
		if (th->syn || th->fin || th->rst)
			return -1;
		l4csum = &th->check;
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return -1;
		l4csum = &uh->check;
	} else {
		return -1;
	}

	if (v6) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end || (void *)(ip6 + 1) != l4)
			return -1;
		__builtin_memcpy(k.saddr, &ip6->saddr, 16);
		__builtin_memcpy(k.daddr, &ip6->daddr, 16);
	} else {
		struct iphdr *ip = l3;

		if ((void *)(ip + 1) > data_end)
			return -1;
		v4_mapped(k.saddr, ip->saddr);
		v4_mapped(k.daddr, ip->daddr);
	}
	k.sport = ((struct ports *)l4)->src;
	k.dport = ((struct ports *)l4)->dst;
	k.proto = proto;

	v = bpf_map_lookup_elem(&fast_flows, &k);
	if (!v) {
		fast_count(1);
		return -1;
	}

	/* The verifier forgets bounds across the lookup: check them again. */
	if (proto == IPPROTO_TCP) {
		if (l4 + sizeof(struct tcphdr) > data_end)
			goto slow;
		l4csum = &((struct tcphdr *)l4)->check;
	} else {
		if (l4 + sizeof(struct udphdr) > data_end)
			goto slow;
		l4csum = &((struct udphdr *)l4)->check;
	}
	len = (__u32)(data_end - l3);
	/* Malformed frames go to a worker, which drops and counts them. */
	if (v6) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end)
			goto slow;
		l4len = bpf_ntohs(ip6->payload_len);
		if (sizeof(*ip6) + l4len > len)
			goto malformed;
	} else {
		struct iphdr *ip = l3;

		if ((void *)(ip + 1) > data_end)
			goto slow;
		if (!fast_ipv4_ok(ip, len, &l4len))
			goto malformed;
	}
	if (!fast_l4_ok(l4, data_end, proto, l4len))
		goto malformed;
	if (len > v->mtu)
		goto slow;
	if (v6) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end)
			goto slow;
		if (ip6->hop_limit <= 1)
			goto slow;
		if (proto == IPPROTO_UDP && *l4csum == 0)
			goto slow;
		ip6->hop_limit--;
		if (v->flags & FAST_NAT) {
			__builtin_memcpy(&ip6->saddr, v->saddr, 16);
			__builtin_memcpy(&ip6->daddr, v->daddr, 16);
		}
	} else {
		struct iphdr *ip = l3;
		__u16 old_w, new_w;

		if ((void *)(ip + 1) > data_end)
			goto slow;
		if (ip->ttl <= 1)
			goto slow;
		/* The TTL shares its header word with the protocol. */
		old_w = ((__u16)ip->ttl << 8) | ip->protocol;
		ip->ttl--;
		new_w = old_w - 0x100;
		ip_delta = (__u16)~old_w + (__u32)new_w;
		if (v->flags & FAST_NAT) {
			__builtin_memcpy(&ip->saddr, &v->saddr[12], 4);
			__builtin_memcpy(&ip->daddr, &v->daddr[12], 4);
			ip_delta += v->ip_delta;
		}
		ip->check = bpf_htons(csum_apply(bpf_ntohs(ip->check), ip_delta));
	}
	if (v->flags & FAST_NAT) {
		struct ports *pp = l4;

		pp->src = v->sport;
		pp->dst = v->dport;
		/* An IPv4 UDP datagram without a checksum keeps none; one that
		 * computes to zero is sent as 0xffff (RFC 768). */
		if (!(proto == IPPROTO_UDP && *l4csum == 0)) {
			__u16 c = csum_apply(bpf_ntohs(*l4csum), v->l4_delta);

			if (proto == IPPROTO_UDP && c == 0)
				c = 0xffff;
			*l4csum = bpf_htons(c);
		}
	}
	__builtin_memcpy(eth->h_dest, v->dmac, 6);
	__builtin_memcpy(eth->h_source, v->smac, 6);
	v->last_seen = bpf_ktime_get_ns();
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);
	fast_count(0);
	return bpf_redirect(v->ifindex, 0);

slow:
	fast_count(2);
	return -1;

malformed:
	fast_count(3);
	return -1;
}

#endif
