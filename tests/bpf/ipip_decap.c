// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * IPIP decapsulation for a test backend: this kernel has no ipip/ip6tnl
 * device, so tests/tests/ipip.rs attaches this program on the backend's
 * eth0 (tc clsact ingress). A frame carrying IPv4-in-IPv4 (outer protocol
 * 4) or IPv6-in-IPv6 (outer next header 41) loses its outer header
 * (bpf_skb_adjust_room, BPF_ADJ_ROOM_MAC: the bytes right after the
 * Ethernet header), and the kernel then receives the inner packet, to the
 * VIP the backend owns on lo. Everything else passes untouched. Each
 * decapsulated frame is counted in `decapped[0]` (per-CPU) for the test.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} decapped SEC(".maps");

SEC("tc")
int ipip_decap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	int shrink = 0;

	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->protocol != 4 || ip->ihl != 5)
			return TC_ACT_OK;
		shrink = sizeof(*ip);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != 41)
			return TC_ACT_OK;
		shrink = sizeof(*ip6);
	} else {
		return TC_ACT_OK;
	}
	if (bpf_skb_adjust_room(skb, -shrink, BPF_ADJ_ROOM_MAC, 0))
		return TC_ACT_SHOT;
	__u32 k = 0;
	__u64 *n = bpf_map_lookup_elem(&decapped, &k);
	if (n)
		__sync_fetch_and_add(n, 1);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
