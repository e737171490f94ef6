package skbstore

import (
	"fmt"
	"net"

	"github.com/skbstore/skbstore/bpf"
	"github.com/skbstore/skbstore/suites/internal/testenv"
)

const tcpBytes = 4 << 20

// tcpLoopback streams data over TCP on loopback: a transmit clone per
// segment, receive skbs freed by __kfree_skb, coalesced with
// kfree_skb_partial or deferred to another CPU.
func tcpLoopback(r *run) {
	t := r.t
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tcpRun(r, ln, func() (net.Conn, error) { return net.Dial("tcp4", ln.Addr().String()) })
}

// tcpVeth streams data over TCP across a veth pair between two network
// namespaces: the real-world case.
func tcpVeth(pair *testenv.VethPair) func(r *run) {
	return func(r *run) {
		t := r.t
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
	}
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
