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
	// localKeys are the map keys per round, and the socket storage
	// lookups; localSingles the one-per-run socket storage operations.
	localKeys    = 4096
	localSingles = 512
	localRounds  = 5
)

// TestLocalStorageCost measures what the thread asks: how far the
// skb-keyed hash map is from local storage. In one program type
// (cgroup_skb, run with BPF_PROG_TEST_RUN, whose packet has a socket of its
// own) and with the same value size, it times the map's update, lookup and
// delete of pointer keys against bpf_sk_storage_get (creating, and looking
// up) and bpf_sk_storage_delete. The socket storage's create and delete are
// timed one per run (a socket has one storage per map), with the cost of a
// timed empty run beside them; the rest in loops of bpf.MapBenchBatch.
// Medians of interleaved rounds, as ratios to the map's operation. It fails
// only if something measured nothing.
func TestLocalStorageCost(t *testing.T) {
	testenv.RequireGuest(t)
	start := time.Now()
	b, err := bpf.LoadStorageBench()
	if err != nil {
		t.Fatalf("load the storage bench: %v", err)
	}
	defer b.Close()
	type step struct {
		op bpf.StorageOp
		n  int
	}
	steps := []step{
		{bpf.StorageMapUpdate, localKeys}, {bpf.StorageMapLookup, localKeys}, {bpf.StorageMapDelete, localKeys},
		{bpf.StorageSkLookup, localKeys}, {bpf.StorageSkCreate, localSingles}, {bpf.StorageSkDelete, localSingles},
		{bpf.StorageLoopBatch, localKeys}, {bpf.StorageLoopOne, localSingles},
	}
	taskOK, noTask := b.TaskStorage()
	if taskOK {
		steps = append(steps, step{bpf.StorageTaskLookup, localKeys}, step{bpf.StorageTaskCreate, localSingles}, step{bpf.StorageTaskDelete, localSingles})
	} else {
		t.Logf("task storage not measured: %s", noTask)
	}
	ns := map[bpf.StorageOp][]float64{}
	misses := map[bpf.StorageOp]uint64{}
	for round := 0; round < localRounds; round++ {
		for _, s := range steps {
			r, err := b.Run(s.op, s.n)
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			ns[s.op] = append(ns[s.op], r.NsPerOp())
			misses[s.op] += r.Misses
		}
	}
	med := map[bpf.StorageOp]float64{}
	for _, s := range steps {
		if med[s.op] = median(ns[s.op]); !(med[s.op] > 0) {
			t.Errorf("%s measured nothing: %v", s.op, ns[s.op])
		}
	}
	for _, op := range []bpf.StorageOp{bpf.StorageMapUpdate, bpf.StorageMapLookup, bpf.StorageMapDelete, bpf.StorageSkLookup, bpf.StorageSkCreate, bpf.StorageTaskLookup, bpf.StorageTaskCreate} {
		if misses[op] > 0 {
			t.Errorf("%s: %d operations failed", op, misses[op])
		}
	}
	if t.Failed() {
		return
	}
	// The single operations carry one timed empty run each: take it off,
	// as the batched ones' loop cost is spread over 64 operations.
	single := func(op bpf.StorageOp) float64 { return max(med[op]-med[bpf.StorageLoopOne], 0) }
	// row compares one map operation with its local storage twin.
	type row struct {
		what     string
		mapOp    bpf.StorageOp
		mapNs    float64
		local    string
		localNs  float64
		ratioKey string
	}
	rows := []row{
		{"look up (a reader)", bpf.StorageMapLookup, med[bpf.StorageMapLookup], "bpf_sk_storage_get", med[bpf.StorageSkLookup], "lookup"},
		{"create (the tc writer)", bpf.StorageMapUpdate, med[bpf.StorageMapUpdate], "bpf_sk_storage_get(F_CREATE)", single(bpf.StorageSkCreate), "create"},
		{"delete (the free hook)", bpf.StorageMapDelete, med[bpf.StorageMapDelete], "bpf_sk_storage_delete", single(bpf.StorageSkDelete), "delete"},
	}
	if taskOK {
		rows = append(rows, []row{
			{"look up (a reader)", bpf.StorageMapLookup, med[bpf.StorageMapLookup], "bpf_task_storage_get", med[bpf.StorageTaskLookup], "task_lookup"},
			{"create (the tc writer)", bpf.StorageMapUpdate, med[bpf.StorageMapUpdate], "bpf_task_storage_get(F_CREATE)", single(bpf.StorageTaskCreate), "task_create"},
			{"delete (the free hook)", bpf.StorageMapDelete, med[bpf.StorageMapDelete], "bpf_task_storage_delete", single(bpf.StorageTaskDelete), "task_delete"},
		}...)
	}
	metrics := map[string]any{"note": emulationNote}
	var md strings.Builder
	md.WriteString("## Skb-keyed map against socket local storage\n\n")
	fmt.Fprintf(&md, "In the kernel, one program type (cgroup_skb run by BPF_PROG_TEST_RUN, whose packet has a socket of its own), %d-byte values: the hash map with 8-byte pointer keys against socket storage. Map operations and storage lookups are timed in loops of %d (loop cost included, %.1f ns/op for an empty loop); storage create and delete one per run, less an empty timed run (%.1f ns). Median of %d rounds. ratio = local storage / map.\n\n",
		bpf.MapBenchValueSize, bpf.MapBenchBatch, med[bpf.StorageLoopBatch], med[bpf.StorageLoopOne], localRounds)
	md.WriteString("| operation | map | ns/op | local storage | ns/op | ratio |\n|---|---|---:|---|---:|---:|\n")
	for _, r := range rows {
		ratio := 0.0
		if r.mapNs > 0 {
			ratio = r.localNs / r.mapNs
		}
		fmt.Fprintf(&md, "| %s | %s | %.1f | %s | %.1f | %.2f |\n", r.what, r.mapOp, r.mapNs, r.local, r.localNs, ratio)
		metrics["local."+r.ratioKey+".map_ns"] = round(r.mapNs, 0)
		metrics["local."+r.ratioKey+".sk_storage_ns"] = round(r.localNs, 0)
		metrics["local."+r.ratioKey+".ratio"] = round(ratio, 3)
		t.Logf("%-24s map %7.1f ns  %-31s %7.1f ns  ratio %.2f", r.what, r.mapNs, r.local, r.localNs, ratio)
	}
	if taskOK {
		md.WriteString("\nTask storage is timed the same way in fentry programs on bpf_fentry_test1, which BPF_PROG_TEST_RUN calls (the map figures are the cgroup_skb ones).\n")
	} else {
		fmt.Fprintf(&md, "\nTask storage is not measured on this kernel: %s.\n", noTask)
	}
	d := time.Since(start)
	fmt.Fprintf(&md, "\nTook %v in the guest.\n", d.Round(time.Second))
	addSection("localstorage", md.String())
	artifacts.SaveJSON(t, "metrics/local_storage_cost.json", metrics)
	artifacts.SaveJSON(t, "bench/local_storage_cost.json", map[string]any{
		"kernel": testenv.KernelRelease(), "note": emulationNote, "ns_per_op": ns, "misses": misses,
		"rounds": localRounds, "metrics": metrics, "duration_ms": d.Milliseconds(),
	})
	t.Logf("%s\n%s", emulationNote, md.String())
}
