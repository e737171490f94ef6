package skbstore

import (
	"testing"
	"time"

	"github.com/skbstore/skbstore/bpf"
)

// measureUDP sends n datagrams over loopback, reading each before sending
// the next, and returns the best time per datagram over three rounds.
func measureUDP(t *testing.T, n int) time.Duration {
	t.Helper()
	p, err := newUDPPair("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	buf := make([]byte, 2048)
	msg := make([]byte, 64)
	best := time.Duration(1<<63 - 1)
	for round := 0; round < 3; round++ {
		start := time.Now()
		for i := 0; i < n; i++ {
			if _, err := p.tx.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := p.rx.Read(buf); err != nil {
				t.Fatal(err)
			}
		}
		if d := time.Since(start) / time.Duration(n); d < best {
			best = d
		}
	}
	return best
}

// TestCost measures the per-packet cost of each strategy and map variant:
// the wall-clock time of a UDP loopback exchange with and without the
// programs, and the kernel's own run time accounting of each program
// (BPF_ENABLE_STATS). The figures are recorded, not judged; the test fails
// only if the programs did not run.
func TestCost(t *testing.T) {
	s := newSuite(t, "cost")
	stats, err := bpf.EnableRunStats()
	if err != nil {
		t.Fatalf("run time stats unavailable: %v", err)
	}
	defer stats.Close()
	const n = 2000
	releaseTrampolines() // the baseline is of no program at all
	baseline := measureUDP(t, n)
	t.Logf("baseline %v per datagram", baseline)

	type costConfig struct {
		config
		observe bool
	}
	var configs []costConfig
	for _, c := range allConfigs() {
		configs = append(configs, costConfig{c, false})
	}
	configs = append(configs, costConfig{config{bpf.StrategyTracepoints, bpf.MapHash}, true})
	for _, cc := range configs {
		name := cc.String()
		if cc.observe {
			name += "-observe"
		}
		t.Run(name, func(t *testing.T) {
			opts := defaultOptions(cc.config)
			opts.ObserveLeaks = cc.observe
			opts.VerifyPayload = false
			s.runStore(t, "udp-exchange", opts, func(r *run) {
				// The last store's hold goes now that this one is
				// attached, and this one's comes before it is
				// detached: nothing but this store runs meanwhile.
				unhold()
				defer holdOnly(r.store)
				before, err := r.store.ProgramStats()
				if err != nil {
					t.Fatal(err)
				}
				per := measureUDP(t, n)
				after, err := r.store.ProgramStats()
				if err != nil {
					t.Fatal(err)
				}
				progs := map[string]any{}
				var total time.Duration
				for name, a := range after {
					b := before[name]
					d := bpf.ProgramStats{Runs: a.Runs - b.Runs, Runtime: a.Runtime - b.Runtime, Missed: a.Missed - b.Missed}
					total += d.Runtime
					progs[name] = map[string]any{"runs": d.Runs, "runtime_ns": d.Runtime.Nanoseconds(), "ns_per_run": d.PerRun().Nanoseconds(), "missed": d.Missed}
				}
				packets := 3 * n
				r.traffic("datagrams", packets)
				r.extra("ns_per_datagram", per.Nanoseconds())
				r.extra("baseline_ns_per_datagram", baseline.Nanoseconds())
				r.extra("wall_overhead_ns_per_datagram", (per - baseline).Nanoseconds())
				r.extra("bpf_ns_per_datagram", (total / time.Duration(packets)).Nanoseconds())
				r.extra("programs", progs)
				t.Logf("%v per datagram (baseline %v), BPF %v per datagram", per, baseline, total/time.Duration(packets))
				alloc := after["fexit_alloc_skb"].Runs - before["fexit_alloc_skb"].Runs
				r.must("programs_ran", alloc >= uint64(packets), "fexit_alloc_skb ran %d times for %d datagrams", alloc, packets)
			})
		})
	}
}
