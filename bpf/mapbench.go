package bpf

import (
	"errors"
	"fmt"
	"math/bits"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// MapOp is a storage map operation whose in-kernel cost MapBench measures.
type MapOp string

const (
	// MapOpUpdate inserts a key that is not in the map (bpf_map_update_elem
	// with BPF_ANY), as the allocation and clone hooks do.
	MapOpUpdate MapOp = "update"
	// MapOpLookup looks up a key that is in the map (bpf_map_lookup_elem),
	// as the clone hooks do for the parent.
	MapOpLookup MapOp = "lookup"
	// MapOpDelete deletes a key that is in the map (bpf_map_delete_elem),
	// as the free hooks do.
	MapOpDelete MapOp = "delete"
	// MapOpLoop is the timed loop with no map operation: what building the
	// key and the loop cost by themselves, included in the other figures.
	MapOpLoop MapOp = "loop"
)

// MapOps lists the measured map operations in the order a round runs
// them: the keys inserted are then looked up, then deleted.
var MapOps = []MapOp{MapOpUpdate, MapOpLookup, MapOpDelete}

// MapBenchBatch is the number of operations one program run does between
// its two bpf_ktime_get_ns() calls.
const MapBenchBatch = 64

// MapBenchValueSize is the size of the values in the benchmarked map: that
// of the storage map's per-skb value.
const MapBenchValueSize = 104

// ErrMapBench is wrapped by the errors of a map benchmark that measured
// nothing or was given impossible arguments.
var ErrMapBench = errors.New("map benchmark")

// MapOpResult is what one MapBench.Run measured.
type MapOpResult struct {
	// Variant is the map variant measured.
	Variant MapVariant `json:"variant"`
	// Op is the operation.
	Op MapOp `json:"op"`
	// Ops is the number of operations timed.
	Ops uint64 `json:"ops"`
	// Runs is how often the program ran (Ops / MapBenchBatch).
	Runs uint64 `json:"runs"`
	// Misses counts operations that failed: an update error, a lookup or
	// delete of a key that was not there (LRU eviction, or a run the kernel
	// repeated after an interruption).
	Misses uint64 `json:"misses"`
	// Elapsed is the time spent in the timed loops, by bpf_ktime_get_ns().
	Elapsed time.Duration `json:"elapsed_ns"`
}

// NsPerOp is the average time per operation in nanoseconds, 0 if nothing
// was measured.
func (r MapOpResult) NsPerOp() float64 {
	if r.Ops == 0 {
		return 0
	}
	return float64(r.Elapsed.Nanoseconds()) / float64(r.Ops)
}

// MapBench is the loaded map benchmark (mapbench.c) for one map variant: a
// map of 8-byte keys and MapBenchValueSize-byte values and an XDP program
// per operation, run with BPF_PROG_TEST_RUN. Nothing is attached. It is not
// safe for concurrent use.
type MapBench struct {
	variant    MapVariant
	maxEntries uint32
	coll       *ebpf.Collection
	progs      map[MapOp]*ebpf.Program
}

// LoadMapBench loads the map benchmark with a map of the given variant and
// size (0 means DefaultMaxEntries). It needs root (or CAP_BPF) and works
// on Linux 5.10 and later.
func LoadMapBench(variant MapVariant, maxEntries uint32) (*MapBench, error) {
	if err := (Options{MapVariant: variant, MaxEntries: maxEntries}).Validate(); err != nil {
		return nil, err
	}
	if maxEntries == 0 {
		maxEntries = DefaultMaxEntries
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise RLIMIT_MEMLOCK: %w", err)
	}
	spec, err := loadMapbench()
	if err != nil {
		return nil, fmt.Errorf("map bench: %w", err)
	}
	m := spec.Maps["bench_map"]
	if m == nil {
		return nil, errors.New("map bench: map bench_map missing from the object")
	}
	if m.ValueSize != MapBenchValueSize {
		return nil, fmt.Errorf("map bench: value size %d, want %d", m.ValueSize, MapBenchValueSize)
	}
	m.MaxEntries = maxEntries
	switch variant {
	case MapHash, "":
		variant = MapHash
		m.Type, m.Flags = ebpf.Hash, 0
	case MapHashNoPrealloc:
		m.Type, m.Flags = ebpf.Hash, unix.BPF_F_NO_PREALLOC
	case MapLRU:
		m.Type, m.Flags = ebpf.LRUHash, 0
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("map bench (%s): load: %w\n%+v", variant, err, ve)
		}
		return nil, fmt.Errorf("map bench (%s): load: %w", variant, err)
	}
	b := &MapBench{variant: variant, maxEntries: maxEntries, coll: coll, progs: map[MapOp]*ebpf.Program{}}
	for op, name := range map[MapOp]string{MapOpUpdate: "bench_update", MapOpLookup: "bench_lookup", MapOpDelete: "bench_delete", MapOpLoop: "bench_empty"} {
		p := coll.Programs[name]
		if p == nil {
			coll.Close()
			return nil, fmt.Errorf("map bench: program %s missing from the object", name)
		}
		b.progs[op] = p
	}
	return b, nil
}

// Variant returns the map variant being measured.
func (b *MapBench) Variant() MapVariant { return b.variant }

// Run runs op's program on keys consecutive keys (rounded up to a power of
// two number of MapBenchBatch batches; at most the map's size) and returns
// the time measured in the kernel. To measure lookups and deletes of keys
// that are in the map, run MapOpUpdate, MapOpLookup and MapOpDelete with
// the same keys, in that order; the map is then empty again.
func (b *MapBench) Run(op MapOp, keys int) (MapOpResult, error) {
	res := MapOpResult{Variant: b.variant, Op: op}
	prog := b.progs[op]
	if prog == nil {
		return res, fmt.Errorf("%w: unknown operation %q", ErrMapBench, op)
	}
	if keys <= 0 {
		return res, fmt.Errorf("%w: %d keys", ErrMapBench, keys)
	}
	batches := uint64(keys+MapBenchBatch-1) / MapBenchBatch
	if batches&(batches-1) != 0 {
		batches = 1 << bits.Len64(batches)
	}
	if batches*MapBenchBatch > uint64(b.maxEntries) {
		return res, fmt.Errorf("%w: %d keys do not fit a map of %d entries", ErrMapBench, batches*MapBenchBatch, b.maxEntries)
	}
	st := b.coll.Maps["bench_state_map"]
	if err := st.Put(uint32(0), mapbenchBenchState{SeqMask: batches - 1}); err != nil {
		return res, fmt.Errorf("map bench: reset state: %w", err)
	}
	// XDP's test run wants at least an Ethernet header.
	if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64), Repeat: uint32(batches)}); err != nil {
		return res, fmt.Errorf("map bench (%s %s): test run: %w", b.variant, op, err)
	}
	var out mapbenchBenchState
	if err := st.Lookup(uint32(0), &out); err != nil {
		return res, fmt.Errorf("map bench: read state: %w", err)
	}
	res.Ops, res.Runs, res.Misses, res.Elapsed = out.Ops, out.Runs, out.Misses, time.Duration(out.Ns)
	if res.Runs < batches || res.Ops != res.Runs*MapBenchBatch {
		return res, fmt.Errorf("%w (%s %s): %d runs and %d operations for a repeat of %d", ErrMapBench, b.variant, op, res.Runs, res.Ops, batches)
	}
	if res.Elapsed <= 0 {
		return res, fmt.Errorf("%w (%s %s): %d operations took no measurable time", ErrMapBench, b.variant, op, res.Ops)
	}
	return res, nil
}

// Entries counts the keys currently in the benchmarked map.
func (b *MapBench) Entries() (int, error) {
	var (
		k uint64
		v [MapBenchValueSize]byte
		n int
	)
	it := b.coll.Maps["bench_map"].Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		return n, fmt.Errorf("map bench: iterate: %w", err)
	}
	return n, nil
}

// Close unloads the programs and the maps.
func (b *MapBench) Close() error {
	if b.coll != nil {
		b.coll.Close()
		b.coll = nil
	}
	return nil
}
