// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Sluice's socket-level load balancing of the node's own traffic
 * (control/src/host_traffic/, README "From the node itself").
 *
 * cgroup sock_addr programs, attached by bpf_link to the root of the cgroup
 * v2 hierarchy, rewrite the destination of a socket of this network
 * namespace when it connects (or, for unconnected UDP, sends) to a service
 * front end: the backend is taken at connect time from `backends`, which
 * Sluice keeps in step with its service table. No packet is translated:
 * the kernel connects to the backend itself, so replies need no NAT.
 *
 *   connect4/6      TCP, UDP and SCTP connect(): front end -> backend;
 *                   no backend -> ECONNREFUSED (kube-proxy's REJECT).
 *   sendmsg4/6      unconnected UDP sendto(): the same, per datagram.
 *   recvmsg4/6      unconnected UDP recvfrom(): backend -> front end, so
 *                   the application sees the address it sent to.
 *   getpeername4/6  getpeername() of a connected socket: the front end.
 *
 * Service ranges (--service-cidr; dataplane/src/steer/ranges.rs): a
 * destination no front end matched is looked up in the `service_ranges`
 * trie, as the steering program does, because kube-proxy's
 * cluster-ips-check chain also runs on the node's own output
 * (filter-output-post-dnat): a ClusterIP on a port no Service has ->
 * ECONNREFUSED (its reject), an address in a range no Service owns ->
 * EPERM (its drop; the kernel's answer to a packet a local output hook
 * dropped, without the SYN retries a TCP connect would spend first).
 * Counted in config[2] and config[3]. Off (service_ranges_on 0, set by the
 * loader): no lookup.
 *
 * Only sockets whose network namespace cookie is config[0] are touched:
 * the root cgroup holds every process of the machine, in every namespace.
 *
 * Backend choice: `svcs` gives the front end's generation id and slot count;
 * slot (cursor++ mod count) of `backends` is taken. Sluice fills the slots
 * with the sequence of choices the service's own scheduler makes for
 * consecutive new flows from the node (host_traffic/plan.rs), so rr and wrr
 * rotate as in the data path. With session affinity (svc->affinity_ns > 0)
 * the last choice is kept in `affinity` until it has been idle that long.
 *
 * Addresses: IPv4 in addr[0], the rest zero; ports in network order as in
 * the context structures (user_port holds the port in its low 16 bits).
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#define EPERM 1
#define ECONNREFUSED 111
#define AF_INET 2
#define AF_INET6 10

/* svc_val.flags */
#define SVC_REJECT 1 /* no usable endpoint: refuse at once */

struct svc_key {
	__u32 addr[4];
	__u16 port; /* network order */
	__u8 proto;
	__u8 family;
};

struct svc_val {
	__u32 id;     /* generation id: the backends' key */
	__u32 count;  /* slots, 0 with SVC_REJECT */
	__u32 flags;
	__u32 cursor; /* advanced atomically per new socket */
	__u64 affinity_ns;
};

struct backend_key {
	__u32 id;
	__u32 slot;
};

struct backend_val {
	__u32 addr[4];
	__u16 port; /* network order */
	__u8 family;
	__u8 pad;
};

struct revnat_key {
	__u64 cookie; /* socket cookie */
	struct backend_val backend;
	__u32 pad; /* explicit: the key is hashed whole, padding included */
};

struct affinity_val {
	struct backend_val backend;
	__u64 last_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
} svcs SEC(".maps");

/* A front end's slots over every front end (dataplane/src/host_sock.rs
 * MAX_SLOTS_TOTAL); allocated as written. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct backend_key);
	__type(value, struct backend_val);
} backends SEC(".maps");

/* Which backends a generation's slots name (each once), so that an
 * affinity entry is checked with one lookup, whatever the slot count. */
struct member_key {
	__u32 id;
	struct backend_val backend;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct member_key);
	__type(value, __u8);
} members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct revnat_key);
	__type(value, struct backend_val);
} revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct svc_key);
	__type(value, struct affinity_val);
} affinity SEC(".maps");

/* [0]: the netns cookie served; [1]: rewrites; [2]: refusals; [3]: drops
 * for a destination in a service range. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} config SEC(".maps");

static __always_inline void count(__u32 i)
{
	__u64 *v = bpf_map_lookup_elem(&config, &i);
	if (v)
		__sync_fetch_and_add(v, 1);
}

/* The steering program's trie layout (one per program object). */
#define SERVICE_RANGES_MAX (262144 + 64)
#include "ranges.h"

static __always_inline int ours(struct bpf_sock_addr *ctx)
{
	__u32 k = 0;
	__u64 *want = bpf_map_lookup_elem(&config, &k);
	return want && *want != 0 && *want == bpf_get_netns_cookie(ctx);
}

static __always_inline void key_of(struct bpf_sock_addr *ctx, struct svc_key *k, int v6)
{
	if (v6) {
		k->addr[0] = ctx->user_ip6[0];
		k->addr[1] = ctx->user_ip6[1];
		k->addr[2] = ctx->user_ip6[2];
		k->addr[3] = ctx->user_ip6[3];
		k->family = AF_INET6;
	} else {
		k->addr[0] = ctx->user_ip4;
		k->family = AF_INET;
	}
	k->port = (__u16)ctx->user_port;
	k->proto = (__u8)ctx->protocol;
}

/* The socket's family decides which fields exist (the verifier refuses
 * user_ip6 in an IPv4 program); a backend of the other family is never
 * planned (host_traffic/plan.rs), and is refused here as well. */
static __always_inline int set_dst(struct bpf_sock_addr *ctx, const struct backend_val *b, int v6)
{
	if (b->family != (v6 ? AF_INET6 : AF_INET))
		return 0;
	if (v6) {
		ctx->user_ip6[0] = b->addr[0];
		ctx->user_ip6[1] = b->addr[1];
		ctx->user_ip6[2] = b->addr[2];
		ctx->user_ip6[3] = b->addr[3];
	} else {
		ctx->user_ip4 = b->addr[0];
	}
	ctx->user_port = b->port;
	return 1;
}

/* Whether `b` is still one of the service's slots (an affinity entry for a
 * removed endpoint must not be used). */
static __always_inline int still_listed(const struct svc_val *svc, const struct backend_val *b)
{
	struct member_key mk;

	__builtin_memset(&mk, 0, sizeof(mk));
	mk.id = svc->id;
	mk.backend = *b;
	return bpf_map_lookup_elem(&members, &mk) != 0;
}

/* The backend for a new socket to `k`, NULL when none. */
static __always_inline const struct backend_val *choose(struct svc_key *k, struct svc_val *svc)
{
	__u64 now = 0;
	if (svc->affinity_ns) {
		now = bpf_ktime_get_ns();
		struct affinity_val *a = bpf_map_lookup_elem(&affinity, k);
		if (a && now - a->last_ns < svc->affinity_ns && still_listed(svc, &a->backend)) {
			a->last_ns = now;
			return &a->backend;
		}
	}
	struct backend_key bk = {.id = svc->id};
	bk.slot = __sync_fetch_and_add(&svc->cursor, 1) % svc->count;
	struct backend_val *b = bpf_map_lookup_elem(&backends, &bk);
	if (b && svc->affinity_ns) {
		struct affinity_val a = {.backend = *b, .last_ns = now};
		bpf_map_update_elem(&affinity, k, &a, BPF_ANY);
	}
	return b;
}

/* A destination no front end matched: 1 lets it go, 0 refuses it
 * (service ranges, above). */
static __always_inline int service_range(const struct svc_key *k)
{
	struct range_key rk = {.prefixlen = 128};
	__u8 *cls;

	if (!service_ranges_on)
		return 1;
	if (k->family == AF_INET6) {
		__builtin_memcpy(rk.addr, k->addr, 16);
	} else {
		rk.addr[10] = 0xff;
		rk.addr[11] = 0xff;
		__builtin_memcpy(&rk.addr[12], &k->addr[0], 4);
	}
	cls = bpf_map_lookup_elem(&service_ranges, &rk);
	if (!cls)
		return 1;
	if (*cls == RANGE_REJECT) {
		count(2);
		bpf_set_retval(-ECONNREFUSED);
	} else {
		count(3);
		bpf_set_retval(-EPERM);
	}
	return 0;
}

/* connect() and unconnected sendmsg(): rewrite towards a backend. */
static __always_inline int forward(struct bpf_sock_addr *ctx, int v6)
{
	if (!ours(ctx))
		return 1;
	struct svc_key k = {};
	key_of(ctx, &k, v6);
	struct svc_val *svc = bpf_map_lookup_elem(&svcs, &k);
	if (!svc)
		return service_range(&k);
	if ((svc->flags & SVC_REJECT) || svc->count == 0) {
		count(2);
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	const struct backend_val *b = choose(&k, svc);
	if (!b || b->family != k.family)
		return 1;
	struct revnat_key rk;
	__builtin_memset(&rk, 0, sizeof(rk));
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.backend = *b;
	struct backend_val front = {.port = k.port, .family = k.family};
	front.addr[0] = k.addr[0];
	front.addr[1] = k.addr[1];
	front.addr[2] = k.addr[2];
	front.addr[3] = k.addr[3];
	bpf_map_update_elem(&revnat, &rk, &front, BPF_ANY);
	set_dst(ctx, b, v6);
	count(1);
	return 1;
}

/* recvmsg() and getpeername(): show the front end instead of the backend. */
static __always_inline int reverse(struct bpf_sock_addr *ctx, int v6)
{
	if (!ours(ctx))
		return 1;
	struct revnat_key rk;
	__builtin_memset(&rk, 0, sizeof(rk));
	rk.cookie = bpf_get_socket_cookie(ctx);
	struct svc_key k = {};
	key_of(ctx, &k, v6);
	rk.backend.addr[0] = k.addr[0];
	rk.backend.addr[1] = k.addr[1];
	rk.backend.addr[2] = k.addr[2];
	rk.backend.addr[3] = k.addr[3];
	rk.backend.port = k.port;
	rk.backend.family = k.family;
	struct backend_val *front = bpf_map_lookup_elem(&revnat, &rk);
	if (front)
		set_dst(ctx, front, v6);
	return 1;
}

SEC("cgroup/connect4")
int host_connect4(struct bpf_sock_addr *ctx) { return forward(ctx, 0); }

SEC("cgroup/connect6")
int host_connect6(struct bpf_sock_addr *ctx) { return forward(ctx, 1); }

SEC("cgroup/sendmsg4")
int host_sendmsg4(struct bpf_sock_addr *ctx) { return forward(ctx, 0); }

SEC("cgroup/sendmsg6")
int host_sendmsg6(struct bpf_sock_addr *ctx) { return forward(ctx, 1); }

SEC("cgroup/recvmsg4")
int host_recvmsg4(struct bpf_sock_addr *ctx) { return reverse(ctx, 0); }

SEC("cgroup/recvmsg6")
int host_recvmsg6(struct bpf_sock_addr *ctx) { return reverse(ctx, 1); }

SEC("cgroup/getpeername4")
int host_getpeername4(struct bpf_sock_addr *ctx) { return reverse(ctx, 0); }

SEC("cgroup/getpeername6")
int host_getpeername6(struct bpf_sock_addr *ctx) { return reverse(ctx, 1); }

char _license[] SEC("license") = "Dual BSD/GPL";
