package vmtest

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestFindSplat(t *testing.T) {
	tests := []struct {
		line string
		kind string // "" for no splat
	}{
		{"[    2.111912] WARNING: CPU: 0 PID: 1 at net/core/skbuff.c:123 skb_foo+0x1/0x2", "WARNING"},
		{"[   10.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000", "BUG"},
		{"[   10.000000] BUG: KASAN: slab-use-after-free in kfree_skb+0x10/0x20", "KASAN"},
		{"[   10.000000] BUG: soft lockup - CPU#0 stuck for 22s! [swapper/0:1]", "soft lockup"},
		{"[   10.000000] WARNING: possible circular locking dependency detected", "lockdep"},
		{"[   10.000000] WARNING: suspicious RCU usage", "lockdep"},
		{"[   30.000000] rcu: INFO: rcu_preempt self-detected stall on CPU", "RCU stall"},
		{"[   30.000000] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", "RCU stall"},
		{"[  120.000000] INFO: task kworker/0:1:12 blocked for more than 120 seconds.", "hung task"},
		{"[    5.000000] general protection fault, probably for non-canonical address 0xdead: 0000 [#1] PREEMPT SMP NOPTI", "oops"},
		{"[    5.000000] kernel BUG at net/core/skbuff.c:200!", "oops"},
		{"[    5.000000] Oops: 0000 [#1] SMP", "oops"},
		{"[    5.000000] UBSAN: shift-out-of-bounds in net/core/filter.c:1", "UBSAN"},
		{"unreferenced object 0xffff888003a1c000 (size 256):", "kmemleak"},
		// Not splats.
		{"[    0.000000] Linux version 6.1.0-56-cloud-amd64", ""},
		{"[    1.000000] ACPI Warning: something firmware", ""},
		{"[    1.000000] clocksource: tsc: mask: 0xffffffffffffffff", ""},
		{"init: 2026/11/25 WARNING: not at line start", ""},
		{"", ""},
	}
	for _, tt := range tests {
		s, ok := findSplat(tt.line)
		if tt.kind == "" {
			assert.False(t, ok, "%q reported as %v", tt.line, s)
			continue
		}
		if assert.True(t, ok, "%q not reported", tt.line) {
			assert.Equal(t, tt.kind, s.Kind, tt.line)
		}
	}
}

func TestSplatScannerReportsEachOnce(t *testing.T) {
	var s splatScanner
	s.line("[ 1.0] WARNING: CPU: 0 PID: 1 at a.c:1 f")
	s.line("[ 1.1] other")
	// The same line in dmesg after the console is not a second splat.
	s.line("[    1.000000] WARNING: CPU: 0 PID: 1 at a.c:1 f")
	assert.Len(t, s.result(), 1)
}

func TestSplatScannerIsBounded(t *testing.T) {
	var s splatScanner
	for i := range 10 * maxSplats {
		s.line(fmt.Sprintf("[ 1.0] WARNING: CPU: 0 PID: %d at a.c:1 f", i))
	}
	got := s.result()
	assert.Len(t, got, maxSplats+1)
	assert.Equal(t, "more", got[maxSplats].Kind)
	assert.Contains(t, got[maxSplats].Line, fmt.Sprint(9*maxSplats))
}
