//go:build ignore

// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * mapbench: the in-kernel cost of the storage map's operations for 8-byte
 * pointer-like keys, per map variant (the loader rewrites the map's type
 * and flags as it does for skbstore.c's skb_store).
 *
 * Each program is an XDP program run through BPF_PROG_TEST_RUN with a
 * repeat count. One run does BENCH_BATCH operations of one kind on
 * consecutive keys and adds the bpf_ktime_get_ns() time around them to
 * bench_state, so helper call and loop overhead are included, the
 * test_run machinery is not. Keys look like skb addresses: a kernel
 * direct-map base plus a 256-byte stride. Run number n (bench_state.seq)
 * uses batch (n & seq_mask), so a program re-run by the kernel after an
 * interruption reuses keys instead of running past the inserted ones.
 *
 * Written for Linux 5.10: the loop has a constant bound (bounded loops
 * are verified since 5.3) and is not unrolled, so that one key slot on
 * the stack serves every iteration.
 */
#include "include/skbstore_common.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define BENCH_BATCH 64
#define KEY_BASE 0xffff888000000000ULL
#define KEY_STRIDE 256
#define XDP_PASS 2
#define BPF_MAP_TYPE_ARRAY 2 /* UAPI; the shared header lacks it */

/* Same size as skbstore.c's struct skb_value: 48 + 5*8 + 4*4 bytes. */
struct bench_value {
	__u8 data[104];
};

/* Results of the runs since user space last reset it. */
struct bench_state {
	__u64 seq;      /* runs so far: selects the batch of keys */
	__u64 seq_mask; /* set by user space: batches - 1 (a power of two) */
	__u64 ns;       /* time spent in the timed loops */
	__u64 ops;      /* operations done */
	__u64 misses;   /* failed operations: update error, lookup or delete of a missing key */
	__u64 runs;     /* program runs */
};

/* The map under test. Type, flags and size are rewritten by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct bench_value);
} bench_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_state);
} bench_state_map SEC(".maps");

const struct bench_state *unused_bench_state __attribute__((unused));


static __always_inline struct bench_state *state(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&bench_state_map, &zero);
}

static __always_inline __u64 first_key(struct bench_state *st)
{
	return KEY_BASE + ((st->seq & st->seq_mask) * BENCH_BATCH) * KEY_STRIDE;
}

SEC("xdp")
int bench_update(struct xdp_md *ctx)
{
	struct bench_state *st = state();
	struct bench_value val = {};
	__u64 key, base, t0, t1, miss = 0;

	if (!st)
		return XDP_PASS;
	base = first_key(st);
	t0 = bpf_ktime_get_ns();
#pragma clang loop unroll(disable)
	for (int i = 0; i < BENCH_BATCH; i++) {
		key = base + (__u64)i * KEY_STRIDE;
		if (bpf_map_update_elem(&bench_map, &key, &val, BPF_ANY))
			miss++;
	}
	t1 = bpf_ktime_get_ns();
	st->ns += t1 - t0;
	st->ops += BENCH_BATCH;
	st->misses += miss;
	st->seq++;
	st->runs++;
	return XDP_PASS;
}

SEC("xdp")
int bench_lookup(struct xdp_md *ctx)
{
	struct bench_state *st = state();
	__u64 key, base, t0, t1, miss = 0;

	if (!st)
		return XDP_PASS;
	base = first_key(st);
	t0 = bpf_ktime_get_ns();
#pragma clang loop unroll(disable)
	for (int i = 0; i < BENCH_BATCH; i++) {
		key = base + (__u64)i * KEY_STRIDE;
		if (!bpf_map_lookup_elem(&bench_map, &key))
			miss++;
	}
	t1 = bpf_ktime_get_ns();
	st->ns += t1 - t0;
	st->ops += BENCH_BATCH;
	st->misses += miss;
	st->seq++;
	st->runs++;
	return XDP_PASS;
}

SEC("xdp")
int bench_delete(struct xdp_md *ctx)
{
	struct bench_state *st = state();
	__u64 key, base, t0, t1, miss = 0;

	if (!st)
		return XDP_PASS;
	base = first_key(st);
	t0 = bpf_ktime_get_ns();
#pragma clang loop unroll(disable)
	for (int i = 0; i < BENCH_BATCH; i++) {
		key = base + (__u64)i * KEY_STRIDE;
		if (bpf_map_delete_elem(&bench_map, &key))
			miss++;
	}
	t1 = bpf_ktime_get_ns();
	st->ns += t1 - t0;
	st->ops += BENCH_BATCH;
	st->misses += miss;
	st->seq++;
	st->runs++;
	return XDP_PASS;
}

/* The loop with no map operation: what the timed loop costs by itself. */
SEC("xdp")
int bench_empty(struct xdp_md *ctx)
{
	struct bench_state *st = state();
	__u64 key, base, t0, t1, miss = 0;

	if (!st)
		return XDP_PASS;
	base = first_key(st);
	t0 = bpf_ktime_get_ns();
#pragma clang loop unroll(disable)
	for (int i = 0; i < BENCH_BATCH; i++) {
		key = base + (__u64)i * KEY_STRIDE;
		barrier_var(key);
		if (!key)
			miss++;
	}
	t1 = bpf_ktime_get_ns();
	st->ns += t1 - t0;
	st->ops += BENCH_BATCH;
	st->misses += miss;
	st->seq++;
	st->runs++;
	return XDP_PASS;
}
