package bpf

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		ok   bool
	}{
		{"defaults", Options{}, true},
		{"complete lru", Options{Strategy: StrategyComplete, MapVariant: MapLRU}, true},
		{"noprealloc", Options{MapVariant: MapHashNoPrealloc, MaxEntries: 16}, true},
		{"bad strategy", Options{Strategy: "kprobes"}, false},
		{"bad variant", Options{MapVariant: "array"}, false},
		{"too large", Options{MaxEntries: 1 << 25}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.opts.Validate()
			if tc.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, ErrInvalidOptions)
			}
		})
	}
}

func TestOptionsDefaults(t *testing.T) {
	o := Options{}.withDefaults()
	assert.Equal(t, StrategyTracepoints, o.Strategy)
	assert.Equal(t, MapHash, o.MapVariant)
	assert.Equal(t, uint32(DefaultMaxEntries), o.MaxEntries)
	assert.False(t, o.observes())
	assert.True(t, Options{ObserveLeaks: true}.observes())
	assert.True(t, Options{Strategy: StrategyComplete}.observes())
}

func TestParse(t *testing.T) {
	for _, s := range Strategies {
		got, err := ParseStrategy(string(s))
		require.NoError(t, err)
		assert.Equal(t, s, got)
	}
	for _, v := range MapVariants {
		got, err := ParseMapVariant(string(v))
		require.NoError(t, err)
		assert.Equal(t, v, got)
	}
	_, err := ParseStrategy("nope")
	assert.ErrorIs(t, err, ErrInvalidOptions)
	_, err = ParseMapVariant("nope")
	assert.ErrorIs(t, err, ErrInvalidOptions)
}

// specWith builds a BTF spec holding the given types.
func specWith(t *testing.T, types ...btf.Type) *btf.Spec {
	t.Helper()
	b, err := btf.NewBuilder(types, nil)
	require.NoError(t, err)
	raw, err := b.Marshal(nil, nil)
	require.NoError(t, err)
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	require.NoError(t, err)
	return spec
}

// traceTypedef is how the kernel describes a raw tracepoint in BTF: a
// typedef btf_trace_<name> of a pointer to void (*)(void *__data, args...).
func traceTypedef(name string, args int) *btf.Typedef {
	ptr := &btf.Pointer{Target: &btf.Void{}}
	params := []btf.FuncParam{{Name: "__data", Type: ptr}}
	for i := 0; i < args; i++ {
		params = append(params, btf.FuncParam{Type: ptr})
	}
	return &btf.Typedef{Name: "btf_trace_" + name, Type: &btf.Pointer{Target: &btf.FuncProto{Return: &btf.Void{}, Params: params}}}
}

func TestTracepointArgs(t *testing.T) {
	for _, tc := range []struct {
		kernel string
		args   int
	}{{"5.10", 2}, {"5.17", 3}, {"6.11", 4}} {
		t.Run(tc.kernel, func(t *testing.T) {
			spec := specWith(t, traceTypedef("kfree_skb", tc.args), traceTypedef("consume_skb", 1))
			n, err := tracepointArgs(spec, "kfree_skb")
			require.NoError(t, err)
			assert.Equal(t, tc.args, n)
			ki, err := kernelInfo(spec)
			require.NoError(t, err)
			assert.Equal(t, tc.args, ki.KfreeSkbArgs)
			assert.Equal(t, tc.args >= 3, ki.HasDropReasons)
			assert.Equal(t, 1, ki.ConsumeSkbArgs)
			assert.True(t, hasTracepoint(spec, "kfree_skb"))
			assert.False(t, hasTracepoint(spec, "kfree_skb_reason"))
		})
	}
}

func TestTracepointArgsErrors(t *testing.T) {
	spec := specWith(t, &btf.Typedef{Name: "btf_trace_kfree_skb", Type: &btf.Int{Name: "int", Size: 4}})
	_, err := tracepointArgs(spec, "kfree_skb")
	assert.ErrorContains(t, err, "not a pointer")
	_, err = tracepointArgs(spec, "consume_skb")
	assert.ErrorIs(t, err, btf.ErrNotFound)
}

func TestHasFunc(t *testing.T) {
	proto := &btf.FuncProto{Return: &btf.Void{}}
	spec := specWith(t, &btf.Func{Name: "kfree_skbmem", Type: proto, Linkage: btf.StaticFunc})
	assert.True(t, hasFunc(spec, "kfree_skbmem"))
	assert.False(t, hasFunc(spec, "napi_build_skb"))
}

func TestDropReasonNames(t *testing.T) {
	spec := specWith(t, &btf.Enum{Name: "skb_drop_reason", Size: 4, Values: []btf.EnumValue{
		{Name: "SKB_NOT_DROPPED_YET", Value: 0},
		{Name: "SKB_CONSUMED", Value: 1},
		{Name: "SKB_DROP_REASON_NOT_SPECIFIED", Value: 2},
		{Name: "SKB_DROP_REASON_NO_SOCKET", Value: 3},
	}})
	names, err := dropReasonNames(spec)
	require.NoError(t, err)
	assert.Equal(t, map[uint32]string{0: "SKB_NOT_DROPPED_YET", 1: "SKB_CONSUMED", 2: "NOT_SPECIFIED", 3: "NO_SOCKET"}, names)
}

func TestExpectedPayload(t *testing.T) {
	p := ExpectedPayload(0x0102030405060708)
	// Byte i is byte (i%8) of the root id, little-endian, xor 0x5b+29i.
	assert.Equal(t, byte(0x08^0x5b), p[0])
	assert.Equal(t, byte(0x07^byte(0x5b+29)), p[1])
	assert.Equal(t, byte(0x08)^byte((0x5b+8*29)%256), p[8])
	assert.NotEqual(t, p, ExpectedPayload(0x0102030405060709))
	v := Value{RootID: 42, Payload: ExpectedPayload(42)}
	assert.True(t, v.PayloadOK())
	v.Payload[47] ^= 1
	assert.False(t, v.PayloadOK())
}

func TestCountersAvailability(t *testing.T) {
	loaded := map[string]bool{}
	for _, h := range hooks {
		loaded[h.prog] = true
	}
	delete(loaded, "fentry_napi_kfree_skb")

	// Tracepoints without observers: no leak attribution.
	u := unavailableCounters(map[string]bool{"tp_consume_skb": true, "tp_kfree_skb": true, "fexit_alloc_skb": true, "fexit_skb_clone": true}, false, false, false)
	assert.Contains(t, u, "leak_seen.__kfree_skb")
	assert.Contains(t, u, "stale_after_leak")
	assert.Contains(t, u, "reason_table_full")
	assert.Contains(t, u, "created.napi_build")
	assert.NotContains(t, u, "deleted.consume_skb")
	assert.NotContains(t, u, "created.alloc")

	// Complete: extra hooks delete; observers' counters do not apply.
	u = unavailableCounters(loaded, true, true, true)
	assert.Contains(t, u, "leak_seen.kfree_skbmem")
	assert.Contains(t, u, "deleted.__napi_kfree_skb")
	assert.NotContains(t, u, "deleted.kfree_skbmem")

	c := Counters{AllocCalls: 3, Unavailable: u}
	c.Created[CreateAlloc] = 3
	c.Deleted[FreeConsume] = 2
	assert.Equal(t, int64(1), c.Live())
	f := c.Flat()
	assert.Equal(t, uint64(3), f["created.alloc"])
	_, ok := f["leak_seen.kfree_skbmem"]
	assert.False(t, ok, "an unavailable counter must not be reported as a number")

	b, err := json.Marshal(c)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	assert.Equal(t, "unavailable", m["leak_seen.kfree_skbmem"])
	assert.Equal(t, float64(2), m["deleted.consume_skb"])
}

func TestPathNames(t *testing.T) {
	assert.Equal(t, "clone", CreateClone.String())
	assert.Equal(t, "kfree_skbmem", FreeKfreeSkbmem.String())
	assert.Len(t, createPathNames, NumCreatePaths)
	assert.Len(t, freePathNames, NumFreePaths)
	assert.Len(t, freePathProg, NumFreePaths)
	assert.Len(t, createPathProg, NumCreatePaths)
	progs := map[string]bool{}
	for _, h := range hooks {
		progs[h.prog] = true
	}
	for _, p := range append(freePathProg[1:], createPathProg[1:]...) {
		assert.True(t, progs[p], "%s is not a program in the hook table", p)
	}
}

// TestHooksMatchObject checks the hook table against the compiled object:
// every program is described, with the attach type its section implies.
func TestHooksMatchObject(t *testing.T) {
	spec, err := loadSkbstore()
	require.NoError(t, err)
	assert.Len(t, spec.Programs, len(hooks))
	for _, h := range hooks {
		ps, ok := spec.Programs[h.prog]
		require.True(t, ok, "program %s not in object", h.prog)
		assert.Contains(t, ps.SectionName, h.kind.String()+"/", h.prog)
		assert.Equal(t, h.targets[0], ps.AttachTo, h.prog)
	}
	for _, name := range []string{"filter_tgid", "strategy", "kfree_skb_nargs", "verify_payload"} {
		assert.Contains(t, spec.Variables, name)
	}
	require.NoError(t, configure(spec, Options{MapVariant: MapLRU, MaxEntries: 7}.withDefaults(), KernelInfo{KfreeSkbArgs: 3}))
	assert.Equal(t, uint32(7), spec.Maps["skb_store"].MaxEntries)
}

// TestMapBenchSpec checks, without a kernel, that the map benchmark's
// object has what LoadMapBench expects and measures values of the
// storage map's size.
func TestMapBenchSpec(t *testing.T) {
	spec, err := loadMapbench()
	if err != nil {
		t.Fatal(err)
	}
	m := spec.Maps["bench_map"]
	if m == nil || m.KeySize != 8 || m.ValueSize != MapBenchValueSize {
		t.Fatalf("bench_map = %+v, want 8-byte keys and %d-byte values", m, MapBenchValueSize)
	}
	if got := int(unsafe.Sizeof(skbstoreSkbValue{})); got != MapBenchValueSize {
		t.Errorf("skb_value is %d bytes, MapBenchValueSize %d", got, MapBenchValueSize)
	}
	for _, p := range []string{"bench_update", "bench_lookup", "bench_delete", "bench_empty"} {
		if spec.Programs[p] == nil {
			t.Errorf("program %s missing", p)
		}
	}
	if _, err := (&MapBench{progs: map[MapOp]*ebpf.Program{}}).Run("nope", 1); !errors.Is(err, ErrMapBench) {
		t.Errorf("Run(unknown op) = %v, want ErrMapBench", err)
	}
}
