package skbbench

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/skbstore/skbstore/bpf"
	"github.com/skbstore/skbstore/suites/internal/artifacts"
	"github.com/skbstore/skbstore/suites/internal/testenv"
)

const (
	// mapOpKeys are inserted, looked up and deleted per round.
	mapOpKeys = 8192
	// mapOpMaxEntries is the benchmarked map's size: half full at the
	// peak of a round.
	mapOpMaxEntries = 2 * mapOpKeys
	// mapOpRounds is how many rounds run, variants interleaved.
	mapOpRounds = 5
)

// TestMapOpCost measures, in the kernel, the time per update, lookup and
// delete of 8-byte pointer-like keys (with the storage map's value size)
// for each map variant: bpf_ktime_get_ns() around a bounded loop of
// bpf.MapBenchBatch operations in an XDP program run with
// BPF_PROG_TEST_RUN and a repeat count. Rounds interleave the variants;
// the median ns/op per variant and operation is reported with its ratio to
// the preallocated hash map's update. It fails if a variant measured
// nothing or a hash map lost keys.
func TestMapOpCost(t *testing.T) {
	testenv.RequireGuest(t)
	start := time.Now()
	benches := map[bpf.MapVariant]*bpf.MapBench{}
	for _, v := range bpf.MapVariants {
		b, err := bpf.LoadMapBench(v, mapOpMaxEntries)
		if err != nil {
			t.Fatalf("load map bench for %s: %v", v, err)
		}
		defer b.Close()
		benches[v] = b
	}
	ops := append(append([]bpf.MapOp{}, bpf.MapOps...), bpf.MapOpLoop)
	ns := map[bpf.MapVariant]map[bpf.MapOp][]float64{}
	misses := map[string]uint64{}
	for round := 0; round < mapOpRounds; round++ {
		for _, v := range bpf.MapVariants {
			if ns[v] == nil {
				ns[v] = map[bpf.MapOp][]float64{}
			}
			for _, op := range ops {
				r, err := benches[v].Run(op, mapOpKeys)
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				ns[v][op] = append(ns[v][op], r.NsPerOp())
				misses[string(v)+"."+string(op)] += r.Misses
				// A hash map must hold every key; an LRU may evict. A
				// run the kernel repeated reuses keys and may miss.
				if v != bpf.MapLRU && op != bpf.MapOpLoop && r.Misses > 0 && r.Runs == uint64(mapOpKeys/bpf.MapBenchBatch) {
					t.Errorf("%s %s: %d of %d operations failed", v, op, r.Misses, r.Ops)
				}
			}
			if n, err := benches[v].Entries(); err != nil {
				t.Fatal(err)
			} else if n != 0 && v != bpf.MapLRU {
				t.Errorf("%s: %d keys left after deleting every key", v, n)
			}
		}
	}

	base := median(ns[bpf.MapHash][bpf.MapOpUpdate])
	if !(base > 0) {
		t.Fatalf("hash update measured nothing: %v", ns[bpf.MapHash][bpf.MapOpUpdate])
	}
	metrics := map[string]any{"note": emulationNote}
	var md strings.Builder
	md.WriteString("## Map operation cost, 8-byte pointer keys\n\n")
	fmt.Fprintf(&md, "Measured in the kernel: bpf_ktime_get_ns() around a loop of %d operations in an XDP program run with BPF_PROG_TEST_RUN (repeat). %d keys (a kernel address plus a 256-byte stride, values of %d bytes like the storage map's) are inserted, looked up and deleted per round in a map of %d entries; median of %d rounds, variants interleaved. ns/op includes the loop's own cost (the loop row: the same loop with no map operation). ratio = ns/op / hash update's ns/op.\n\n",
		bpf.MapBenchBatch, mapOpKeys, bpf.MapBenchValueSize, mapOpMaxEntries, mapOpRounds)
	md.WriteString("| variant |")
	for _, op := range ops {
		fmt.Fprintf(&md, " %s ns/op | ratio |", op)
	}
	md.WriteString("\n|---|")
	for range ops {
		md.WriteString("---:|---:|")
	}
	md.WriteString("\n")
	for _, v := range bpf.MapVariants {
		fmt.Fprintf(&md, "| %s |", v)
		for _, op := range ops {
			m := median(ns[v][op])
			if !(m > 0) {
				t.Errorf("%s %s measured nothing: %v", v, op, ns[v][op])
				md.WriteString(" – | – |")
				continue
			}
			if op == bpf.MapOpLoop {
				// The loop does not depend on the variant: one row.
				if v == bpf.MapHash {
					metrics["map.loop.ns"] = round(m, 1)
				}
			} else {
				// Whole ns: the report prints integers as they are.
				metrics[fmt.Sprintf("map.%s.%s.ns", v, op)] = round(m, 0)
				metrics[fmt.Sprintf("map.%s.%s.ratio", v, op)] = round(m/base, 3)
			}
			fmt.Fprintf(&md, " %.1f | %.2f |", m, m/base)
			t.Logf("%-16s %-7s %8.1f ns/op  ratio %.3f  rounds %v", v, op, m, m/base, ns[v][op])
		}
		md.WriteString("\n")
	}
	if n := misses[string(bpf.MapLRU)+"."+string(bpf.MapOpLookup)]; n > 0 {
		fmt.Fprintf(&md, "\nThe LRU map missed %d lookups (evicted keys).\n", n)
	}
	d := time.Since(start)
	fmt.Fprintf(&md, "\nTook %v in the guest.\n", d.Round(time.Second))
	addSection("mapops", md.String())
	artifacts.SaveJSON(t, "metrics/map_op_cost.json", metrics)
	artifacts.SaveJSON(t, "bench/map_op_cost.json", map[string]any{
		"kernel": testenv.KernelRelease(), "note": emulationNote, "ns_per_op": ns, "misses": misses,
		"keys": mapOpKeys, "max_entries": mapOpMaxEntries, "rounds": mapOpRounds, "batch": bpf.MapBenchBatch,
		"metrics": metrics, "duration_ms": d.Milliseconds(),
	})
	t.Logf("%s\n%s", emulationNote, md.String())
}
