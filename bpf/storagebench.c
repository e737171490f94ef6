//go:build ignore

// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * storagebench: what the skb-keyed hash map costs per access against socket
 * local storage (bpf_sk_storage_get), measured the same way in the same
 * program type. Every program is a cgroup_skb program run by
 * BPF_PROG_TEST_RUN, which gives the packet a fresh socket of its own per
 * run syscall (skb->sk), so that socket storage can be created on it.
 *
 *   map_update, map_lookup, map_delete   BATCH operations on pointer-like
 *                                        8-byte keys (as mapbench.c)
 *   sk_lookup                            BATCH bpf_sk_storage_get without
 *                                        F_CREATE, after one with it
 *   sk_create, sk_delete                 one operation per run (a socket
 *                                        has one storage of a map): the
 *                                        first run of a syscall creates,
 *                                        sk_delete creates then deletes
 *   empty_batch, empty_one               the timed loops with no operation
 *
 * Each adds the bpf_ktime_get_ns() time around its operations to
 * bench_state. Values are 104 bytes, as skbstore.c's struct skb_value.
 */
#include "include/skbstore_common.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define BENCH_BATCH 64
#define KEY_BASE 0xffff888000000000ULL
#define KEY_STRIDE 256
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_SK_STORAGE 24
#define BPF_SK_STORAGE_GET_F_CREATE 1

static void *(*bpf_sk_storage_get)(void *map, void *sk, void *value, __u64 flags) = (void *)107;
static long (*bpf_sk_storage_delete)(void *map, void *sk) = (void *)108;
static void *(*bpf_sk_fullsock)(void *sk) = (void *)95;
static void *(*bpf_task_storage_get)(void *map, void *task, void *value, __u64 flags) = (void *)156;
static long (*bpf_task_storage_delete)(void *map, void *task) = (void *)157;
static void *(*bpf_get_current_task_btf)(void) = (void *)158;

#define BPF_MAP_TYPE_TASK_STORAGE 29
#define BPF_LOCAL_STORAGE_GET_F_CREATE 1

struct value {
	__u8 data[104];
};

struct bench_state {
	__u64 seq;      /* runs so far: selects the batch of keys */
	__u64 seq_mask; /* set by user space: batches - 1 (a power of two) */
	__u64 ns;       /* time spent in the timed parts */
	__u64 ops;      /* operations done */
	__u64 misses;   /* failed operations */
	__u64 runs;     /* program runs */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct value);
} skb_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct value);
} sk_map SEC(".maps");

/* Task storage (Linux 5.11+); the loader leaves it and the task_*
 * programs out where the kernel lacks it. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct value);
} task_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_state);
} sb_state SEC(".maps");

const struct bench_state *unused_sb_state __attribute__((unused));

static __always_inline struct bench_state *state(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sb_state, &zero);
}

static __always_inline void account(struct bench_state *st, __u64 ns, __u64 ops, __u64 miss)
{
	st->ns += ns;
	st->ops += ops;
	st->misses += miss;
	st->seq++;
	st->runs++;
}

static __always_inline __u64 first_key(struct bench_state *st)
{
	return KEY_BASE + ((st->seq & st->seq_mask) * BENCH_BATCH) * KEY_STRIDE;
}

/* The socket behind the test run's packet. */
static __always_inline void *socket_of(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 0;
	return bpf_sk_fullsock(sk);
}

SEC("cgroup_skb/ingress")
int map_update(struct __sk_buff *skb)
{
	struct bench_state *st = state();
	struct value val = {};
	__u64 key, base, t0, t1, miss = 0;
	if (!st)
		return 1;
	base = first_key(st);
	t0 = bpf_ktime_get_ns();
#pragma clang loop unroll(disable)
	for (int i = 0; i < BENCH_BATCH; i++) {
		key = base + (__u64)i * KEY_STRIDE;
		if (bpf_map_update_elem(&skb_map, &key, &val, BPF_ANY))
			miss++;
	}
	t1 = bpf_ktime_get_ns();
	account(st, t1 - t0, BENCH_BATCH, miss);
	return 1;
}

SEC("cgroup_skb/ingress")
int map_lookup(struct __sk_buff *skb)
{
	struct bench_state *st = state();
	__u64 key, base, t0, t1, miss = 0;
	if (!st)
		return 1;
	base = first_key(st);
	t0 = bpf_ktime_get_ns();
#pragma clang loop unroll(disable)
	for (int i = 0; i < BENCH_BATCH; i++) {
		key = base + (__u64)i * KEY_STRIDE;
		if (!bpf_map_lookup_elem(&skb_map, &key))
			miss++;
	}
	t1 = bpf_ktime_get_ns();
	account(st, t1 - t0, BENCH_BATCH, miss);
	return 1;
}

SEC("cgroup_skb/ingress")
int map_delete(struct __sk_buff *skb)
{
	struct bench_state *st = state();
	__u64 key, base, t0, t1, miss = 0;
	if (!st)
		return 1;
	base = first_key(st);
	t0 = bpf_ktime_get_ns();
#pragma clang loop unroll(disable)
	for (int i = 0; i < BENCH_BATCH; i++) {
		key = base + (__u64)i * KEY_STRIDE;
		if (bpf_map_delete_elem(&skb_map, &key))
			miss++;
	}
	t1 = bpf_ktime_get_ns();
	account(st, t1 - t0, BENCH_BATCH, miss);
	return 1;
}

SEC("cgroup_skb/ingress")
int sk_lookup(struct __sk_buff *skb)
{
	struct bench_state *st = state();
	__u64 t0, t1, miss = 0;
	if (!st)
		return 1;
	void *sk = socket_of(skb);
	if (!sk || !bpf_sk_storage_get(&sk_map, sk, 0, BPF_SK_STORAGE_GET_F_CREATE)) {
		account(st, 0, 0, 1);
		return 1;
	}
	t0 = bpf_ktime_get_ns();
#pragma clang loop unroll(disable)
	for (int i = 0; i < BENCH_BATCH; i++) {
		if (!bpf_sk_storage_get(&sk_map, sk, 0, 0))
			miss++;
	}
	t1 = bpf_ktime_get_ns();
	account(st, t1 - t0, BENCH_BATCH, miss);
	return 1;
}

SEC("cgroup_skb/ingress")
int sk_create(struct __sk_buff *skb)
{
	struct bench_state *st = state();
	__u64 t0, t1, miss = 0;
	if (!st)
		return 1;
	void *sk = socket_of(skb);
	if (!sk) {
		account(st, 0, 0, 1);
		return 1;
	}
	t0 = bpf_ktime_get_ns();
	if (!bpf_sk_storage_get(&sk_map, sk, 0, BPF_SK_STORAGE_GET_F_CREATE))
		miss++;
	t1 = bpf_ktime_get_ns();
	account(st, t1 - t0, 1, miss);
	return 1;
}

SEC("cgroup_skb/ingress")
int sk_delete(struct __sk_buff *skb)
{
	struct bench_state *st = state();
	__u64 t0, t1, miss = 0;
	if (!st)
		return 1;
	void *sk = socket_of(skb);
	if (!sk || !bpf_sk_storage_get(&sk_map, sk, 0, BPF_SK_STORAGE_GET_F_CREATE)) {
		account(st, 0, 0, 1);
		return 1;
	}
	t0 = bpf_ktime_get_ns();
	if (bpf_sk_storage_delete(&sk_map, sk))
		miss++;
	t1 = bpf_ktime_get_ns();
	account(st, t1 - t0, 1, miss);
	return 1;
}

SEC("cgroup_skb/ingress")
int empty_batch(struct __sk_buff *skb)
{
	struct bench_state *st = state();
	__u64 key, base, t0, t1, miss = 0;
	if (!st)
		return 1;
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
	account(st, t1 - t0, BENCH_BATCH, miss);
	return 1;
}

SEC("cgroup_skb/ingress")
int empty_one(struct __sk_buff *skb)
{
	struct bench_state *st = state();
	__u64 t0, t1, key = 1;
	if (!st)
		return 1;
	t0 = bpf_ktime_get_ns();
	barrier_var(key);
	t1 = bpf_ktime_get_ns();
	account(st, t1 - t0, 1, key ? 0 : 1);
	return 1;
}

/* Task storage, in fentry programs on bpf_fentry_test1, which
 * BPF_PROG_TEST_RUN calls for a tracing program (one program attached at a
 * time). The task is the one running the test: its storage is deleted
 * before create runs, made before lookup and delete run. */
SEC("fentry/bpf_fentry_test1")
int task_lookup(__u64 *ctx)
{
	struct bench_state *st = state();
	__u64 t0, t1, miss = 0;
	if (!st)
		return 0;
	void *task = bpf_get_current_task_btf();
	if (!bpf_task_storage_get(&task_map, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE)) {
		account(st, 0, 0, 1);
		return 0;
	}
	t0 = bpf_ktime_get_ns();
#pragma clang loop unroll(disable)
	for (int i = 0; i < BENCH_BATCH; i++) {
		if (!bpf_task_storage_get(&task_map, task, 0, 0))
			miss++;
	}
	t1 = bpf_ktime_get_ns();
	account(st, t1 - t0, BENCH_BATCH, miss);
	return 0;
}

SEC("fentry/bpf_fentry_test1")
int task_create(__u64 *ctx)
{
	struct bench_state *st = state();
	__u64 t0, t1, miss = 0;
	if (!st)
		return 0;
	void *task = bpf_get_current_task_btf();
	bpf_task_storage_delete(&task_map, task);
	t0 = bpf_ktime_get_ns();
	if (!bpf_task_storage_get(&task_map, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE))
		miss++;
	t1 = bpf_ktime_get_ns();
	account(st, t1 - t0, 1, miss);
	return 0;
}

SEC("fentry/bpf_fentry_test1")
int task_delete(__u64 *ctx)
{
	struct bench_state *st = state();
	__u64 t0, t1, miss = 0;
	if (!st)
		return 0;
	void *task = bpf_get_current_task_btf();
	if (!bpf_task_storage_get(&task_map, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE)) {
		account(st, 0, 0, 1);
		return 0;
	}
	t0 = bpf_ktime_get_ns();
	if (bpf_task_storage_delete(&task_map, task))
		miss++;
	t1 = bpf_ktime_get_ns();
	account(st, t1 - t0, 1, miss);
	return 0;
}
