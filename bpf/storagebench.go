package bpf

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
)

// StorageOp is one operation StorageBench times (storagebench.c): the
// skb-keyed hash map's, or socket local storage's.
type StorageOp string

// The operations. Map operations and StorageSkLookup are timed in batches
// of MapBenchBatch; the socket storage's create and delete one per run,
// since a socket has one storage per map.
const (
	StorageMapUpdate StorageOp = "map_update" // insert a new key (the tc writer's update)
	StorageMapLookup StorageOp = "map_lookup" // look up a present key (a reader)
	StorageMapDelete StorageOp = "map_delete" // delete a present key (the free hook)
	StorageSkCreate  StorageOp = "sk_create"  // bpf_sk_storage_get(F_CREATE) on a socket without storage
	StorageSkLookup  StorageOp = "sk_lookup"  // bpf_sk_storage_get on a socket with storage
	StorageSkDelete  StorageOp = "sk_delete"  // bpf_sk_storage_delete
	StorageLoopBatch StorageOp = "empty_batch"
	StorageLoopOne   StorageOp = "empty_one"
	// Task storage (Linux 5.11+), timed in fentry programs that
	// BPF_PROG_TEST_RUN triggers through bpf_fentry_test1.
	StorageTaskCreate StorageOp = "task_create" // bpf_task_storage_get(F_CREATE) on a task without storage
	StorageTaskLookup StorageOp = "task_lookup" // bpf_task_storage_get on a task with storage
	StorageTaskDelete StorageOp = "task_delete" // bpf_task_storage_delete
)

// tracing reports whether op is timed in a tracing program.
func (op StorageOp) tracing() bool {
	return op == StorageTaskCreate || op == StorageTaskLookup || op == StorageTaskDelete
}

// single reports whether op runs one operation per BPF_PROG_TEST_RUN call
// (each call's packet has a fresh socket).
func (op StorageOp) single() bool {
	return op == StorageSkCreate || op == StorageSkDelete || op == StorageLoopOne || op == StorageTaskCreate || op == StorageTaskDelete
}

// StorageOpResult is what one StorageBench.Run measured.
type StorageOpResult struct {
	Op      StorageOp     `json:"op"`
	Ops     uint64        `json:"ops"`
	Misses  uint64        `json:"misses"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

// NsPerOp is the average time per operation in nanoseconds.
func (r StorageOpResult) NsPerOp() float64 {
	if r.Ops == 0 {
		return 0
	}
	return float64(r.Elapsed.Nanoseconds()) / float64(r.Ops)
}

// StorageBench is the loaded storagebench.c: cgroup_skb programs run with
// BPF_PROG_TEST_RUN, nothing attached. Socket storage needs Linux 5.2, the
// helpers in cgroup_skb programs are there from 5.10 on. Not safe for
// concurrent use.
type StorageBench struct {
	coll *ebpf.Collection
	// noTask says why task storage is not measured ("" when it is).
	noTask string
}

// TaskStorage reports whether task storage can be measured, and if not why.
func (b *StorageBench) TaskStorage() (bool, string) { return b.noTask == "", b.noTask }

// LoadStorageBench loads the programs and maps.
func LoadStorageBench() (*StorageBench, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise RLIMIT_MEMLOCK: %w", err)
	}
	spec, err := loadStoragebench()
	if err != nil {
		return nil, fmt.Errorf("storage bench: %w", err)
	}
	b := &StorageBench{}
	// Task storage is Linux 5.11's: without it the map cannot be made
	// and its programs are left out.
	if m, err := ebpf.NewMap(spec.Maps["task_map"]); err != nil {
		b.noTask = fmt.Sprintf("task storage map: %v", err)
	} else {
		m.Close()
	}
	if b.noTask != "" {
		delete(spec.Maps, "task_map")
		for _, op := range []StorageOp{StorageTaskCreate, StorageTaskLookup, StorageTaskDelete} {
			delete(spec.Programs, string(op))
		}
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("storage bench: load: %w\n%+v", err, ve)
		}
		return nil, fmt.Errorf("storage bench: load: %w", err)
	}
	b.coll = coll
	// Task storage is timed in fentry programs: a kernel that cannot
	// attach them (arm64 before 6.4) has it but cannot be measured here.
	if p := coll.Programs[string(StorageTaskLookup)]; p != nil {
		l, err := attachTrampoline(p)
		if errors.Is(err, ErrNoTrampoline) {
			b.noTask = err.Error()
		} else if err == nil {
			l.Close()
		}
	}
	return b, nil
}

// testPacket is an Ethernet frame with an IPv4 header, what a cgroup_skb
// test run wants.
var testPacket = func() []byte {
	p := make([]byte, 64)
	p[12], p[13] = 0x08, 0x00 // IPv4
	p[14] = 0x45
	p[16], p[17] = 0, 50 // total length
	p[22], p[23] = 64, 17
	copy(p[26:], []byte{192, 0, 2, 1, 192, 0, 2, 2})
	return p
}()

// Run times op n times (batched operations: rounded up to a power-of-two
// number of batches, at most the map's 65536 keys). Run the map operations
// with the same n in the order update, lookup, delete: the map is then
// empty again.
func (b *StorageBench) Run(op StorageOp, n int) (StorageOpResult, error) {
	res := StorageOpResult{Op: op}
	prog := b.coll.Programs[string(op)]
	if prog == nil {
		return res, fmt.Errorf("%w: unknown storage operation %q", ErrMapBench, op)
	}
	if n <= 0 {
		return res, fmt.Errorf("%w: %d operations", ErrMapBench, n)
	}
	st := b.coll.Maps["sb_state"]
	calls, repeat, batches := n, 1, uint64(1)
	if !op.single() {
		batches = uint64(n+MapBenchBatch-1) / MapBenchBatch
		for batches&(batches-1) != 0 {
			batches++
		}
		if batches*MapBenchBatch > 65536 {
			return res, fmt.Errorf("%w: %d operations do not fit the map", ErrMapBench, n)
		}
		calls, repeat = 1, int(batches)
	}
	if err := st.Put(uint32(0), storagebenchBenchState{SeqMask: batches - 1}); err != nil {
		return res, fmt.Errorf("storage bench: reset state: %w", err)
	}
	run := &ebpf.RunOptions{Data: testPacket, Repeat: uint32(repeat)}
	if op.tracing() {
		// The test run calls bpf_fentry_test1 once, where the program
		// is attached for the duration.
		l, err := attachTrampoline(prog)
		if err != nil {
			return res, fmt.Errorf("storage bench (%s): attach: %w", op, err)
		}
		defer l.Close()
		run = &ebpf.RunOptions{}
		calls *= repeat
	}
	for i := 0; i < calls; i++ {
		if _, err := prog.Run(run); err != nil {
			return res, fmt.Errorf("storage bench (%s): test run: %w", op, err)
		}
	}
	var out storagebenchBenchState
	if err := st.Lookup(uint32(0), &out); err != nil {
		return res, fmt.Errorf("storage bench: read state: %w", err)
	}
	res.Ops, res.Misses, res.Elapsed = out.Ops, out.Misses, time.Duration(out.Ns)
	if res.Ops == 0 {
		return res, fmt.Errorf("%w (%s): no operation ran (%d misses: no socket on the test packet?)", ErrMapBench, op, res.Misses)
	}
	if res.Elapsed <= 0 {
		return res, fmt.Errorf("%w (%s): %d operations took no measurable time", ErrMapBench, op, res.Ops)
	}
	return res, nil
}

// Close unloads everything.
func (b *StorageBench) Close() error {
	if b.coll != nil {
		b.coll.Close()
		b.coll = nil
	}
	return nil
}
