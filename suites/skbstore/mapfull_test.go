package skbstore

import (
	"testing"
	"time"

	"github.com/skbstore/skbstore/bpf"
)

// TestMapFull keeps many more skbs alive than the map has room for: the
// hash variants must count the failed creations, the LRU variant evicts;
// nothing may crash and the counts must stay consistent.
func TestMapFull(t *testing.T) {
	s := newSuite(t, "map_full")
	const maxEntries, n = 64, 400
	holdTrampolines(t)
	forEachConfig(t, func(t *testing.T, c config) {
		opts := defaultOptions(c)
		opts.MaxEntries = maxEntries
		s.runStore(t, "udp-held", opts, func(r *run) {
			p, err := newUDPPair("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if err := p.rx.SetReadBuffer(8 << 20); err != nil {
				t.Fatal(err)
			}
			sent, err := send(p.tx, n, 100)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			held, err := r.store.Entries()
			if err != nil {
				t.Fatal(err)
			}
			cnt := r.counters()
			got := drain(p.rx, sent, 300*time.Millisecond)
			r.traffic("sent", sent)
			r.traffic("received", got)
			r.extra("entries_while_held", len(held))
			r.extra("map_full", cnt.TotalMapFull())
			r.must("all_received", got == sent, "received %d of %d", got, sent)
			r.must("map_bounded", len(held) <= maxEntries, "%d entries in a map of %d", len(held), maxEntries)
			if c.variant == bpf.MapLRU {
				ev := cnt.Live() - int64(len(held))
				r.extra("evicted_while_held", ev)
				r.must("lru_evicts", ev > 0, "inserted-deleted %d vs %d entries: nothing evicted", cnt.Live(), len(held))
				r.must("lru_never_full", cnt.TotalMapFull() == 0, "LRU reported %d full-map failures", cnt.TotalMapFull())
			} else {
				r.must("full_counted", cnt.TotalMapFull() > 0, "%d datagrams held with a map of %d, but map_full = 0", sent, maxEntries)
			}
		})
	})
}
