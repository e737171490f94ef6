//go:build ignore

// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * skbstore: per-skb storage in an ordinary hash map keyed by the skb's
 * address, following the life cycle the BPF maintainers suggest instead of
 * a dedicated "skb local storage":
 *
 *   create  fexit __alloc_skb (+ __build_skb / build_skb, napi_build_skb)
 *   clone   fexit skb_clone, skb_copy, __pskb_copy_fclone
 *   delete  tp_btf/consume_skb, tp_btf/kfree_skb                ("tracepoints")
 *           + fentry __kfree_skb, kfree_skb_partial,
 *             __napi_kfree_skb, skb_release_head_state,
 *             kfree_skbmem                                      ("complete")
 *
 * In the "tracepoints" strategy the extra free hooks may still be loaded as
 * observers: they do not delete, they mark the entry as freed behind the
 * tracepoints' back (dead_path) so that user space can attribute every
 * leaked and stale entry to the free path that caused it.
 *
 * Written for Linux 5.10 and later: only helpers 5.10 has, no bounded
 * loops, no atomic fetch. Everything that differs between kernels is a
 * const volatile set by the loader from the running kernel's BTF.
 */
#include "include/skbstore_common.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define PAYLOAD_LEN 48

/* Which path created an entry. Index 0 is unused so that 0 means "none". */
enum create_path {
	CP_NONE = 0,
	CP_ALLOC = 1,      /* fexit __alloc_skb */
	CP_BUILD = 2,      /* fexit __build_skb (or build_skb) */
	CP_NAPI_BUILD = 3, /* fexit napi_build_skb */
	CP_CLONE = 4,      /* fexit skb_clone */
	CP_COPY = 5,       /* fexit skb_copy */
	CP_PSKB_COPY = 6,  /* fexit __pskb_copy_fclone */
	NR_CREATE_PATHS = 7,
};

/* Which path removed (or, for observers, saw the release of) an entry. */
enum free_path {
	FP_NONE = 0,
	FP_CONSUME = 1,        /* tp_btf/consume_skb */
	FP_KFREE_SKB = 2,      /* tp_btf/kfree_skb */
	FP___KFREE_SKB = 3,    /* fentry __kfree_skb (direct callers) */
	FP_PARTIAL = 4,        /* fentry kfree_skb_partial */
	FP_NAPI_KFREE = 5,     /* fentry __napi_kfree_skb */
	FP_RELEASE_HEAD = 6,   /* fentry skb_release_head_state */
	FP_KFREE_SKBMEM = 7,   /* fentry kfree_skbmem */
	NR_FREE_PATHS = 8,
};

/* Free strategies, see the file comment. */
enum strategy {
	STRATEGY_TRACEPOINTS = 0,
	STRATEGY_COMPLETE = 1,
};

/* The value stored per skb. */
struct skb_value {
	__u8 payload[PAYLOAD_LEN]; /* user payload, a function of root_id */
	__u64 alloc_ns;            /* allocation time of the root skb */
	__u64 created_ns;          /* when this entry was written */
	__u64 root_id;             /* unique id of the root allocation */
	__u64 parent;              /* parent skb address (clones, copies) */
	__u64 dead_ns;             /* observer: time the skb was released */
	__u32 generation;          /* 0 for allocations, parent's + 1 */
	__u32 create_path;         /* enum create_path */
	__u32 tgid;                /* task that allocated the root skb */
	__u32 dead_path;           /* observer: enum free_path, 0 if alive */
};

/* Event counters, one copy per CPU, summed by user space. */
struct counters {
	__u64 seq;                             /* per-CPU root id sequence */
	__u64 alloc_calls;                     /* allocations passing the filter */
	__u64 alloc_filtered;                  /* allocations filtered out */
	__u64 created[NR_CREATE_PATHS];        /* new entries per path */
	__u64 stale[NR_CREATE_PATHS];          /* key present at create: replaced */
	__u64 stale_after_leak;                /* ... and an observer saw it freed */
	__u64 stale_filtered;                  /* filtered-out alloc hit a key */
	__u64 map_full[NR_CREATE_PATHS];       /* create failed: map full */
	__u64 update_err;                      /* create failed otherwise */
	__u64 update_errno;                    /* errno of the last such failure */
	__u64 clone_untracked;                 /* clone/copy of an unknown skb */
	__u64 clone_of_dead;                   /* parent entry was already freed */
	__u64 copy_over_alloc;                 /* copy rewrote its inner alloc's entry */
	__u64 deleted[NR_FREE_PATHS];          /* entries deleted per path */
	__u64 deleted_dead;                    /* deleted entries that were dead */
	__u64 leak_seen[NR_FREE_PATHS];        /* observer: freed, entry kept */
	__u64 deferred;                        /* skb_attempt_defer_free seen */
	__u64 payload_bad;                     /* payload check failed at delete */
	__u64 reason_full;                     /* drop reason table full */
};

/* Set by the loader before load; read-only afterwards. */
const volatile __u32 filter_tgid = 0;     /* 0: track every allocation */
const volatile __u32 strategy = STRATEGY_TRACEPOINTS;
const volatile __u32 kfree_skb_nargs = 2; /* tracepoint args after __data */
const volatile __u32 verify_payload = 1;

/* The storage. Type, flags and size are rewritten by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct skb_value);
} skb_store SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counters);
} counter_map SEC(".maps");

/* Drop reason -> number of tracked skbs deleted by kfree_skb with it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} drop_reasons SEC(".maps");

/* Make the generated Go bindings include these types. */
const enum create_path *unused_create_path __attribute__((unused));
const enum free_path *unused_free_path __attribute__((unused));
const struct counters *unused_counters __attribute__((unused));

static __always_inline struct counters *cnt(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&counter_map, &zero);
}

static __always_inline __u8 payload_byte(__u64 root_id, __u32 i)
{
	return (__u8)(root_id >> ((i & 7) * 8)) ^ (__u8)(0x5b + i * 29);
}

static __always_inline void fill_payload(struct skb_value *v)
{
#pragma unroll
	for (__u32 i = 0; i < PAYLOAD_LEN; i++)
		v->payload[i] = payload_byte(v->root_id, i);
}

static __always_inline int payload_ok(const struct skb_value *v)
{
	__u8 bad = 0;
#pragma unroll
	for (__u32 i = 0; i < PAYLOAD_LEN; i++)
		bad |= v->payload[i] ^ payload_byte(v->root_id, i);
	return bad == 0;
}

/* Map helpers return a long, but before 6.5 the verifier turns hash map
 * calls into direct calls of map ops that return int: the upper 32 bits of
 * the result are then garbage. Errors are compared as int for that reason. */
static __always_inline int is_full(int err)
{
	return err == -E2BIG || err == -ENOMEM;
}

/* Writes v under key as a new entry, counting what happened on path cp. */
static __always_inline void insert(struct counters *c, __u64 key, struct skb_value *v, __u32 cp)
{
	int err = (int)bpf_map_update_elem(&skb_store, &key, v, BPF_NOEXIST);
	if (err == 0) {
		c->created[cp]++;
		return;
	}
	if (err == -EEXIST) {
		/* An skb at this address was freed without the map hearing
		 * of it: the old entry is stale. Replace it. */
		struct skb_value *old = bpf_map_lookup_elem(&skb_store, &key);
		if (old && old->dead_path)
			c->stale_after_leak++;
		c->stale[cp]++;
		err = (int)bpf_map_update_elem(&skb_store, &key, v, BPF_ANY);
		if (err == 0)
			return;
	}
	if (is_full(err))
		c->map_full[cp]++;
	else {
		c->update_err++;
		c->update_errno = -err;
	}
}

static __always_inline int on_alloc(__u64 skb, __u32 cp)
{
	struct counters *c;
	struct skb_value v = {};
	__u64 pid_tgid;
	__u32 cpu;

	if (!skb)
		return 0;
	c = cnt();
	if (!c)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	if (filter_tgid && (__u32)(pid_tgid >> 32) != filter_tgid) {
		c->alloc_filtered++;
		if (bpf_map_lookup_elem(&skb_store, &skb))
			c->stale_filtered++;
		return 0;
	}
	c->alloc_calls++;
	cpu = bpf_get_smp_processor_id();
	c->seq++;
	v.root_id = ((__u64)cpu << 48) | (c->seq & 0xffffffffffffULL);
	v.alloc_ns = bpf_ktime_get_ns();
	v.created_ns = v.alloc_ns;
	v.create_path = cp;
	v.tgid = pid_tgid >> 32;
	fill_payload(&v);
	insert(c, skb, &v, cp);
	return 0;
}

/* fexit __alloc_skb(unsigned int size, gfp_t gfp, int flags, int node) */
SEC("fexit/__alloc_skb")
int fexit_alloc_skb(__u64 *ctx)
{
	return on_alloc(ctx[4], CP_ALLOC);
}

/* fexit __build_skb(void *data, unsigned int frag_size); the loader points
 * it at build_skb on kernels without an attachable __build_skb. */
SEC("fexit/__build_skb")
int fexit_build_skb(__u64 *ctx)
{
	return on_alloc(ctx[2], CP_BUILD);
}

/* fexit napi_build_skb(void *data, unsigned int frag_size), 6.1+ */
SEC("fexit/napi_build_skb")
int fexit_napi_build_skb(__u64 *ctx)
{
	return on_alloc(ctx[2], CP_NAPI_BUILD);
}

static __always_inline int on_clone(__u64 parent, __u64 child, __u32 cp)
{
	struct skb_value *pv, nv;
	struct counters *c;

	if (!child)
		return 0;
	c = cnt();
	if (!c)
		return 0;
	pv = bpf_map_lookup_elem(&skb_store, &parent);
	if (!pv) {
		c->clone_untracked++;
		return 0;
	}
	nv = *pv;
	if (nv.dead_path)
		c->clone_of_dead++;
	nv.parent = parent;
	nv.generation = pv->generation + 1;
	nv.create_path = cp;
	nv.created_ns = bpf_ktime_get_ns();
	nv.dead_path = 0;
	nv.dead_ns = 0;

	if (cp != CP_CLONE) {
		/* skb_copy and __pskb_copy_fclone allocate the copy with
		 * __alloc_skb, whose fexit may just have created an entry for
		 * it: that one is rewritten with the parent's data. */
		if ((int)bpf_map_update_elem(&skb_store, &child, &nv, BPF_EXIST) == 0) {
			c->copy_over_alloc++;
			return 0;
		}
	}
	insert(c, child, &nv, cp);
	return 0;
}

/* fexit skb_clone(struct sk_buff *skb, gfp_t gfp) */
SEC("fexit/skb_clone")
int fexit_skb_clone(__u64 *ctx)
{
	return on_clone(ctx[0], ctx[2], CP_CLONE);
}

/* fexit skb_copy(const struct sk_buff *skb, gfp_t gfp) */
SEC("fexit/skb_copy")
int fexit_skb_copy(__u64 *ctx)
{
	return on_clone(ctx[0], ctx[2], CP_COPY);
}

/* fexit __pskb_copy_fclone(struct sk_buff *skb, int headroom, gfp_t gfp,
 *                          bool fclone) */
SEC("fexit/__pskb_copy_fclone")
int fexit_pskb_copy_fclone(__u64 *ctx)
{
	return on_clone(ctx[0], ctx[4], CP_PSKB_COPY);
}

static __always_inline void count_reason(struct counters *c, __u32 reason)
{
	__u64 one = 1, *n;

	n = bpf_map_lookup_elem(&drop_reasons, &reason);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return;
	}
	if ((int)bpf_map_update_elem(&drop_reasons, &reason, &one, BPF_NOEXIST) == 0)
		return;
	n = bpf_map_lookup_elem(&drop_reasons, &reason);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		c->reason_full++;
}

/* Deletes key's entry on free path fp; returns 1 if an entry was deleted. */
static __always_inline int delete(struct counters *c, __u64 key, __u32 fp)
{
	struct skb_value *v = bpf_map_lookup_elem(&skb_store, &key);

	if (!v)
		return 0;
	if (verify_payload && !payload_ok(v))
		c->payload_bad++;
	if (v->dead_path)
		c->deleted_dead++;
	if ((int)bpf_map_delete_elem(&skb_store, &key) != 0)
		return 0;
	c->deleted[fp]++;
	return 1;
}

/* tp_btf/consume_skb: (skb) on 5.10, (skb, location) from 6.3 */
SEC("tp_btf/consume_skb")
int tp_consume_skb(__u64 *ctx)
{
	struct counters *c = cnt();

	if (c)
		delete(c, ctx[0], FP_CONSUME);
	return 0;
}

/* tp_btf/kfree_skb: (skb, location) on 5.10, + reason from 5.17,
 * + rx_sk from 6.11. Arguments a kernel lacks must not be read at all. */
SEC("tp_btf/kfree_skb")
int tp_kfree_skb(__u64 *ctx)
{
	struct counters *c = cnt();
	__u32 reason = 0;

	if (!c)
		return 0;
	if (!delete(c, ctx[0], FP_KFREE_SKB))
		return 0;
	if (kfree_skb_nargs >= 3) {
		reason = (__u32)ctx[2];
		barrier_var(reason);
		count_reason(c, reason);
	}
	return 0;
}

/* A free path no tracepoint sees. "complete" deletes the entry;
 * "tracepoints" only marks it, once, as freed on path fp. */
static __always_inline int on_extra_free(__u64 key, __u32 fp)
{
	struct counters *c = cnt();
	struct skb_value *v;

	if (!c)
		return 0;
	if (strategy == STRATEGY_COMPLETE) {
		delete(c, key, fp);
		return 0;
	}
	v = bpf_map_lookup_elem(&skb_store, &key);
	if (!v || v->dead_path)
		return 0;
	v->dead_path = fp;
	v->dead_ns = bpf_ktime_get_ns();
	c->leak_seen[fp]++;
	return 0;
}

SEC("fentry/__kfree_skb")
int fentry_kfree_skb_direct(__u64 *ctx)
{
	return on_extra_free(ctx[0], FP___KFREE_SKB);
}

/* kfree_skb_partial(skb, head_stolen): with head_stolen the skb is
 * released with kmem_cache_free directly, bypassing kfree_skbmem. */
SEC("fentry/kfree_skb_partial")
int fentry_kfree_skb_partial(__u64 *ctx)
{
	return on_extra_free(ctx[0], FP_PARTIAL);
}

/* __napi_kfree_skb(skb, reason), 6.12+: into the per-CPU NAPI skb cache. */
SEC("fentry/__napi_kfree_skb")
int fentry_napi_kfree_skb(__u64 *ctx)
{
	return on_extra_free(ctx[0], FP_NAPI_KFREE);
}

/* Every path that releases an skb runs skb_release_head_state (through
 * skb_release_all or kfree_skb_partial), including the NAPI cache and bulk
 * frees that never reach kfree_skbmem. */
SEC("fentry/skb_release_head_state")
int fentry_release_head_state(__u64 *ctx)
{
	return on_extra_free(ctx[0], FP_RELEASE_HEAD);
}

SEC("fentry/kfree_skbmem")
int fentry_kfree_skbmem(__u64 *ctx)
{
	return on_extra_free(ctx[0], FP_KFREE_SKBMEM);
}

/* skb_attempt_defer_free(skb), 6.1+: the skb is parked on its allocating
 * CPU's list and freed later (napi_consume_skb, which traces consume_skb).
 * Observed only: the entry is still legitimately alive until then. */
SEC("fentry/skb_attempt_defer_free")
int fentry_defer_free(__u64 *ctx)
{
	struct counters *c = cnt();
	__u64 key = ctx[0];

	if (c && bpf_map_lookup_elem(&skb_store, &key))
		c->deferred++;
	return 0;
}
