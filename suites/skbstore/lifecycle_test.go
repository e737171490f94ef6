package skbstore

import (
	"errors"
	"testing"

	"github.com/skbstore/skbstore/suites/internal/testenv"
)

// lifecycleCase is one traffic case of TestLifecycle.
type lifecycleCase struct {
	name  string // subtest name
	suite string // results file: skbstore/<suite>.json
	run   string // case name in that file
	body  func(r *run)
}

// TestLifecycle runs the life-cycle cases (allocation and consume_skb,
// kfree_skb drops, clones, TCP over loopback and over veth) with every
// strategy and map variant, configuration by configuration: one store is
// loaded and attached per configuration and serves its cases in turn,
// emptied between them (bpf.Store.Reset). Each case checks what it always
// did; only the loading is shared. Run one case with e.g.
// -run 'TestLifecycle/.*/KfreeSkb'.
func TestLifecycle(t *testing.T) {
	suites := map[string]*suiteLog{}
	for _, name := range []string{"alloc_consume", "kfree_skb", "clone", "tcp"} {
		suites[name] = newSuite(t, name)
	}
	// One veth pair for every configuration: it is checked for once, and
	// only the first run sees the neighbour discovery traffic.
	// It is made before any store is attached, as when TCP over veth
	// was a test of its own; a failure fails only the veth cases.
	pair, vethErr := testenv.NewVethPair()
	if pair != nil {
		defer pair.Close()
	}
	holdTrampolines(t)
	cases := []lifecycleCase{
		{"AllocConsume", "alloc_consume", "udp-loopback", allocConsume},
		{"KfreeSkb", "kfree_skb", "udp-drops", kfreeSkb},
		{"Clone", "clone", "af_packet-lo", clone},
		{"TCPLoopback", "tcp", "loopback", tcpLoopback},
		{"TCPVeth", "tcp", "veth", nil},
	}
	for _, c := range allConfigs() {
		t.Run(c.String(), func(t *testing.T) {
			sh := newShared(t, defaultOptions(c))
			for _, lc := range cases {
				t.Run(lc.name, func(t *testing.T) {
					body := lc.body
					if lc.name == "TCPVeth" {
						if errors.Is(vethErr, testenv.ErrNoVeth) {
							t.Skipf("no veth on this kernel (the runner loads the module where there is one): %v", vethErr)
						}
						if vethErr != nil {
							t.Fatalf("veth pair: %v", vethErr)
						}
						body = tcpVeth(pair)
					}
					suites[lc.suite].runShared(t, lc.run, sh, body)
				})
			}
		})
	}
}
