package skbstore

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/skbstore/skbstore/bpf"
	"github.com/skbstore/skbstore/suites/internal/testenv"
)

const tcpBytes = 4 << 20

// TestTCP streams data over TCP on loopback and across a veth pair between
// two network namespaces: the real-world case, with a transmit clone per
// segment and receive skbs freed by __kfree_skb, coalesced with
// kfree_skb_partial or deferred to another CPU.
func TestTCP(t *testing.T) {
	s := newSuite(t, "tcp")
	t.Run("loopback", func(t *testing.T) {
		forEachConfig(t, func(t *testing.T, c config) {
			s.runStore(t, "loopback", defaultOptions(c), func(r *run) {
				ln, err := net.Listen("tcp4", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				tcpRun(r, ln, func() (net.Conn, error) { return net.Dial("tcp4", ln.Addr().String()) })
			})
		})
	})
	t.Run("veth", func(t *testing.T) {
		testenv.RequireGuest(t)
		// One pair for every configuration: it is checked for once, and
		// only the first run sees the neighbour discovery traffic.
		pair, err := testenv.NewVethPair()
		if errors.Is(err, testenv.ErrNoVeth) {
			t.Skipf("no veth on this kernel (the runner loads the module where there is one): %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer pair.Close()
		forEachConfig(t, func(t *testing.T, c config) {
			s.runStore(t, "veth", defaultOptions(c), func(r *run) {
				var ln net.Listener
				if err := testenv.InNetns(pair.B, func() (err error) {
					ln, err = net.Listen("tcp4", net.JoinHostPort(pair.AddrB.String(), "0"))
					return err
				}); err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				tcpRun(r, ln, func() (c net.Conn, err error) {
					err = testenv.InNetns(pair.A, func() (err error) {
						c, err = net.Dial("tcp4", ln.Addr().String())
						return err
					})
					return c, err
				})
			})
		})
	})
}

func tcpRun(r *run, ln net.Listener, dial func() (net.Conn, error)) {
	t := r.t
	n, d, err := testenv.StreamTCP(ln, dial, tcpBytes)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	r.traffic("bytes_sent", tcpBytes)
	r.traffic("bytes_received", n)
	r.traffic("duration_ms", d.Milliseconds())
	r.must("all_bytes_received", n == tcpBytes, "received %d of %d bytes", n, tcpBytes)
	c := r.counters()
	r.must("transmit_clones_tracked", c.Created[bpf.CreateClone] > 0, "TCP clones every segment it transmits, but created.clone = %d", c.Created[bpf.CreateClone])
	r.extra("free_paths", fmt.Sprintf("consume=%d kfree=%d", c.Deleted[bpf.FreeConsume], c.Deleted[bpf.FreeKfreeSkb]))
}
