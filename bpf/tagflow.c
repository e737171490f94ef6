//go:build ignore

// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * tagflow: does per-packet metadata written at tc ingress reach the later
 * layers of the stack when it is kept in a hash map keyed by the skb's
 * address (the BPF maintainers' answer to "skb local storage")?
 *
 *   write   tc ingress (clsact) on the receiving device: the packet's tag,
 *           derived from its payload (UDP: a sequence number after a magic;
 *           TCP: the segment's sequence number), into tags[skb]; the same
 *           tag into skb->mark (the baseline)
 *   read    cgroup_skb/ingress, fentry on the UDP and TCP receive functions,
 *           tc egress (after forwarding), fentry packet_rcv (AF_PACKET taps):
 *           each derives the tag again from the packet it sees and compares
 *           it with tags[skb]: delivered, lost (no entry) or wrong (another
 *           packet's tag: a stale entry at a reused address)
 *   delete  tp_btf/consume_skb, tp_btf/kfree_skb
 *
 * A lost read is explained when it can be: the skb is a clone of a tagged
 * skb (skb_clone is watched), or a non-first IP fragment seen at ingress
 * (reassembly kept another fragment's skb).
 *
 * The tc and cgroup programs get the skb's address from their context
 * pointer: spilled to the stack and read back with bpf_probe_read_kernel,
 * so that it is a plain number the verifier lets a privileged program use
 * as a key. Kernel structure offsets (tracing readers) are CO-RE relocated.
 */
#include "include/skbstore_common.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* TC_ACT_UNSPEC: let the next program of the hook run (TC_ACT_OK would end
 * the hook's programs), then the default, pass. */
#define TC_ACT_OK (-1)
#define BPF_HDR_START_NET 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define TAG_MAGIC 0x54414746 /* "TAGF" */

static long (*bpf_skb_load_bytes_relative)(const void *skb, __u32 offset, void *to, __u32 len, __u32 start_header) = (void *)68;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *src) = (void *)113;
static long (*bpf_xdp_adjust_meta)(struct xdp_md *ctx, int delta) = (void *)54;


/* The fields of the kernel's struct sk_buff the tracing readers use;
 * their offsets are relocated against the running kernel's BTF. */
struct sk_buff___tf {
	__u32 mark;
	unsigned char *head;
	__u16 network_header;
} __attribute__((preserve_access_index));

/* Who reads. */
enum reader {
	R_CGROUP = 0,    /* cgroup_skb/ingress */
	R_UDP_QUEUE = 1, /* fentry __udp_enqueue_schedule_skb */
	R_TCP_RCV = 2,   /* fentry tcp_rcv_established */
	R_TC_EGRESS = 3, /* tc egress, after forwarding */
	R_TAP = 4,       /* fentry packet_rcv: AF_PACKET taps */
	R_XDP_META = 5,  /* tc ingress reading what XDP put in data_meta (the baseline) */
	NR_READERS = 6,
};

struct reader_stats {
	__u64 seen;       /* packets of the test's flow the reader saw */
	__u64 delivered;  /* tags[skb] was this packet's tag */
	__u64 lost;       /* no entry */
	__u64 wrong;      /* another packet's tag */
	__u64 lost_clone; /* lost, and the skb is a clone of a tagged skb */
	__u64 lost_frag;  /* lost, and the skb was a non-first fragment at ingress */
	__u64 mark_ok;    /* skb->mark still carried the tag */
};

struct writer_stats {
	__u64 written;    /* tags written */
	__u64 replaced;   /* an entry was there already (a free path not seen) */
	__u64 failed;     /* map update failed (full) */
	__u64 frags;      /* non-first IP fragments of the flow (no tag to read) */
	__u64 deleted;    /* entries deleted at free */
	__u64 clones;     /* clones of tagged skbs */
};

struct tag_value {
	__u64 tag;
	__u64 written_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct tag_value);
} tags SEC(".maps");

/* Explanations: clone -> parent, non-first fragments. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} clone_parent SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} frag_skbs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NR_READERS);
	__type(key, __u32);
	__type(value, struct reader_stats);
} reader_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct writer_stats);
} writer_counts SEC(".maps");

/* Set by the loader. */
volatile const __u16 flow_port_be = 0; /* destination port of the flow, network order */
volatile const __u8 write_mark = 1;    /* also carry the tag in skb->mark */
volatile const __u8 use_map = 1;       /* 0: skb->mark only, no map (the baseline's cost) */

/* The baseline's mark for a tag: never 0, the value a scrubbed mark has. */
static __always_inline __u32 mark_of(__u64 tag) { return (__u32)tag | 1; }

static __always_inline __u32 bswap32(__u32 x)
{
	return ((x & 0xff) << 24) | ((x & 0xff00) << 8) | ((x >> 8) & 0xff00) | (x >> 24);
}

/* Packet bytes relative to the network header: tc and cgroup programs load
 * them through their context, tracing programs from skb->head. */
enum via { VIA_CTX, VIA_KERNEL };

static __always_inline int load(enum via via, void *skb, __u32 off, void *to, __u32 len)
{
	if (via == VIA_CTX)
		return bpf_skb_load_bytes_relative(skb, off, to, len, BPF_HDR_START_NET);
	struct sk_buff___tf *s = skb;
	unsigned char *head = s->head;
	__u16 nh = s->network_header;
	return bpf_probe_read_kernel(to, len, head + nh + off);
}

/* What a packet is to this test. */
enum kind { K_NOT_OURS = 0, K_TAGGED = 1, K_FRAG = 2, K_VXLAN = 3 };

#define VXLAN_PORT 4789
#define VXLAN_INNER (8 + 8 + 14) /* UDP, VXLAN and inner Ethernet headers */

/* parse reads the IPv4 packet at base (relative to the network header).
 * For a VXLAN packet (UDP to 4789) it sets *inner to the inner IPv4
 * header's offset and returns K_VXLAN, when inner is not NULL. */
static __always_inline int parse(enum via via, void *skb, __u32 base, __u64 *tag, __u32 *inner)
{
	__u8 ip[20];
	if (load(via, skb, base, ip, sizeof(ip)))
		return K_NOT_OURS;
	if ((ip[0] >> 4) != 4)
		return K_NOT_OURS;
	__u32 ihl = (ip[0] & 0xf) * 4;
	__u16 tot_len = ((__u16)ip[2] << 8) | ip[3];
	__u16 frag = (((__u16)ip[6] << 8) | ip[7]) & 0x1fff;
	if (ihl < 20 || ihl > 60)
		return K_NOT_OURS;
	if (frag != 0)
		return K_FRAG; /* ports unknown: user space counts only its own flow's */
	if (ip[9] == IPPROTO_UDP) {
		__u8 l4[16];
		if (load(via, skb, base + ihl, l4, sizeof(l4)))
			return K_NOT_OURS;
		__u16 dport = ((__u16)l4[2] << 8) | l4[3];
		if (inner && dport == VXLAN_PORT) {
			*inner = base + ihl + VXLAN_INNER;
			return K_VXLAN;
		}
		if (*(__u16 *)&l4[2] != flow_port_be)
			return K_NOT_OURS;
		__u32 magic = bswap32(*(__u32 *)&l4[8]);
		if (magic != TAG_MAGIC)
			return K_NOT_OURS;
		*tag = (1ULL << 32) | bswap32(*(__u32 *)&l4[12]);
		return K_TAGGED;
	}
	if (ip[9] == IPPROTO_TCP) {
		__u8 th[16];
		if (load(via, skb, base + ihl, th, sizeof(th)))
			return K_NOT_OURS;
		if (*(__u16 *)&th[2] != flow_port_be)
			return K_NOT_OURS;
		__u32 doff = (th[12] >> 4) * 4;
		if (tot_len <= ihl + doff)
			return K_NOT_OURS; /* no payload: an ACK */
		*tag = (2ULL << 32) | bswap32(*(__u32 *)&th[4]);
		return K_TAGGED;
	}
	return K_NOT_OURS;
}

/* classify derives the tag of a packet of the flow, looking into a VXLAN
 * packet's inner one (a tunnel still to be decapsulated). */
static __always_inline int classify(enum via via, void *skb, __u64 *tag)
{
	__u32 inner = 0;
	int k = parse(via, skb, 0, tag, &inner);
	if (k != K_VXLAN)
		return k;
	return parse(via, skb, inner, tag, 0);
}

/* ctx_key is the address of the skb behind a tc or cgroup context. */
static __always_inline __u64 ctx_key(struct __sk_buff *skb)
{
	volatile __u64 slot = (__u64)(long)skb;
	__u64 key = 0;
	bpf_probe_read_kernel(&key, sizeof(key), (const void *)&slot);
	return key;
}

static __always_inline struct writer_stats *wstats(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&writer_counts, &zero);
}

SEC("tc")
int tag_ingress(struct __sk_buff *skb)
{
	__u64 tag = 0;
	int k = classify(VIA_CTX, skb, &tag);
	if (k == K_NOT_OURS)
		return TC_ACT_OK;
	struct writer_stats *w = wstats();
	if (!w)
		return TC_ACT_OK;
	if (!use_map) {
		if (k == K_TAGGED) {
			skb->mark = mark_of(tag);
			w->written++;
		}
		return TC_ACT_OK;
	}
	__u64 key = ctx_key(skb);
	if (k == K_FRAG) {
		__u64 one = 1;
		bpf_map_update_elem(&frag_skbs, &key, &one, BPF_ANY);
		w->frags++;
		return TC_ACT_OK;
	}
	if (bpf_map_lookup_elem(&tags, &key))
		w->replaced++;
	struct tag_value v = {.tag = tag, .written_ns = bpf_ktime_get_ns()};
	if (bpf_map_update_elem(&tags, &key, &v, BPF_ANY)) {
		w->failed++;
		return TC_ACT_OK;
	}
	w->written++;
	if (write_mark)
		skb->mark = mark_of(tag);
	return TC_ACT_OK;
}

static __always_inline void read_tag(enum reader r, enum via via, void *skb, __u64 key, __u32 mark)
{
	__u64 tag = 0;
	if (classify(via, skb, &tag) != K_TAGGED)
		return;
	__u32 idx = r;
	struct reader_stats *st = bpf_map_lookup_elem(&reader_counts, &idx);
	if (!st)
		return;
	st->seen++;
	if (mark == mark_of(tag))
		st->mark_ok++;
	if (!use_map)
		return;
	struct tag_value *v = bpf_map_lookup_elem(&tags, &key);
	if (!v) {
		st->lost++;
		__u64 *parent = bpf_map_lookup_elem(&clone_parent, &key);
		if (parent && bpf_map_lookup_elem(&tags, parent))
			st->lost_clone++;
		if (bpf_map_lookup_elem(&frag_skbs, &key))
			st->lost_frag++;
		return;
	}
	if (v->tag == tag)
		st->delivered++;
	else
		st->wrong++;
}

SEC("cgroup_skb/ingress")
int read_cgroup(struct __sk_buff *skb)
{
	read_tag(R_CGROUP, VIA_CTX, skb, ctx_key(skb), skb->mark);
	return 1;
}

SEC("tc")
int read_tc_egress(struct __sk_buff *skb)
{
	read_tag(R_TC_EGRESS, VIA_CTX, skb, ctx_key(skb), skb->mark);
	return TC_ACT_OK;
}

static __always_inline int read_traced(enum reader r, void *p)
{
	struct sk_buff___tf *skb = p;
	read_tag(r, VIA_KERNEL, skb, (__u64)(long)p, skb->mark);
	return 0;
}

/* xdp_meta puts the tag of a packet of the flow in the XDP metadata in
 * front of it (the other baseline: data_meta, which tc ingress can read).
 * It parses with direct packet access: Ethernet, IPv4 without options. */
SEC("xdp")
int xdp_meta(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	__u8 *p = data;
	if ((void *)(p + 14 + 20 + 16) > end || p[12] != 0x08 || p[13] != 0 || p[14] != 0x45)
		return 2;
	__u8 *l4 = p + 34;
	__u64 tag;
	if (p[23] == IPPROTO_UDP && *(__u16 *)&l4[2] == flow_port_be) {
		if ((void *)(l4 + 16) > end || bswap32(*(__u32 *)&l4[8]) != TAG_MAGIC)
			return 2;
		tag = (1ULL << 32) | bswap32(*(__u32 *)&l4[12]);
	} else {
		return 2;
	}
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(__u64)))
		return 2;
	void *meta = (void *)(long)ctx->data_meta;
	data = (void *)(long)ctx->data;
	if (meta + sizeof(__u64) > data)
		return 2;
	*(__u64 *)meta = tag;
	return 2; /* XDP_PASS */
}

/* read_tc_meta reads data_meta at tc ingress, the only layer that can. */
SEC("tc")
int read_tc_meta(struct __sk_buff *skb)
{
	void *meta = (void *)(long)skb->data_meta, *data = (void *)(long)skb->data;
	__u64 tag = 0;
	if (classify(VIA_CTX, skb, &tag) != K_TAGGED)
		return TC_ACT_OK;
	__u32 idx = R_XDP_META;
	struct reader_stats *st = bpf_map_lookup_elem(&reader_counts, &idx);
	if (!st)
		return TC_ACT_OK;
	st->seen++;
	if (skb->mark == mark_of(tag))
		st->mark_ok++;
	if (meta + sizeof(__u64) > data)
		st->lost++;
	else if (*(__u64 *)meta == tag)
		st->delivered++;
	else
		st->wrong++;
	return TC_ACT_OK;
}

/* Attached to a veth so that it receives in NAPI, where GRO merges. */
SEC("xdp")
int xdp_pass(void *ctx)
{
	return 2; /* XDP_PASS */
}

/* int __udp_enqueue_schedule_skb(struct sock *sk, struct sk_buff *skb) */
SEC("fentry/__udp_enqueue_schedule_skb")
int read_udp_queue(__u64 *ctx)
{
	return read_traced(R_UDP_QUEUE, (void *)ctx[1]);
}

/* void tcp_rcv_established(struct sock *sk, struct sk_buff *skb) */
SEC("fentry/tcp_rcv_established")
int read_tcp_rcv(__u64 *ctx)
{
	return read_traced(R_TCP_RCV, (void *)ctx[1]);
}

/* int packet_rcv(struct sk_buff *skb, struct net_device *dev, ...) */
SEC("fentry/packet_rcv")
int read_tap(__u64 *ctx)
{
	return read_traced(R_TAP, (void *)ctx[0]);
}

/* struct sk_buff *skb_clone(struct sk_buff *skb, gfp_t gfp_mask) */
SEC("fexit/skb_clone")
int follow_clone(__u64 *ctx)
{
	__u64 parent = ctx[0], child = ctx[2];
	if (!child || !bpf_map_lookup_elem(&tags, &parent))
		return 0;
	bpf_map_update_elem(&clone_parent, &child, &parent, BPF_ANY);
	struct writer_stats *w = wstats();
	if (w)
		w->clones++;
	return 0;
}

static __always_inline int on_free(__u64 key)
{
	if (bpf_map_delete_elem(&tags, &key) == 0) {
		struct writer_stats *w = wstats();
		if (w)
			w->deleted++;
	}
	return 0;
}

SEC("tp_btf/consume_skb")
int free_consume(__u64 *ctx)
{
	return on_free(ctx[0]);
}

SEC("tp_btf/kfree_skb")
int free_kfree(__u64 *ctx)
{
	return on_free(ctx[0]);
}
