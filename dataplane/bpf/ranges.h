/* SPDX-License-Identifier: GPL-2.0 */
/* The service ranges (`--service-cidr`), shared by the steering program
 * (steer.c) and the node's socket programs (host_sock.c): an LPM trie of
 * each range (class RANGE_DROP) and of each ClusterIP inside one (class
 * RANGE_REJECT), filled by dataplane/src/steer/ranges.rs, and the switch
 * the loader sets when the flag is given (a read-only global: with it 0,
 * the verifier prunes every use).
 * Keys: prefix length over the IPv4-mapped 128-bit form, then the address.
 * The includer defines SERVICE_RANGES_MAX (entries) first. */
#ifndef SLUICE_RANGES_H
#define SLUICE_RANGES_H

const volatile __u8 service_ranges_on = 0;

#define RANGE_DROP 1
#define RANGE_REJECT 2

struct range_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SERVICE_RANGES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct range_key);
	__type(value, __u8);
} service_ranges SEC(".maps");

#endif
