package tagflow

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/bpf"
	"github.com/skbstore/skbstore/suites/internal/artifacts"
	"github.com/skbstore/skbstore/suites/internal/testenv"
)

// port is the flow's destination port (UDP and TCP).
const port = 40123

// tagMagic opens every UDP payload of the flow ("TAGF"), followed by the
// datagram's sequence number: the tag tagflow.c derives.
const tagMagic = 0x54414746

// caseResult is one case on this kernel, as saved and reported.
type caseResult struct {
	Case    string                      `json:"case"`
	Traffic string                      `json:"traffic"`
	Sent    int                         `json:"sent"` // datagrams sent, or TCP bytes
	Writer  bpf.WriterCounts            `json:"writer"`
	Readers map[string]bpf.ReaderCounts `json:"readers"`
	// Unread counts, per reader, the tags written that it never saw a
	// packet for: its skb was merged into another (TCP coalescing) or
	// never reached that layer.
	Unread  map[string]uint64 `json:"unread"`
	Skipped []bpf.SkippedHook `json:"skipped,omitempty"`
	Left    int               `json:"left"` // tags still in the map after settling: skbs no free hook saw
	Checks  []string          `json:"checks"`
}

var (
	resultsMu sync.Mutex
	results   []*caseResult
)

func TestMain(m *testing.M) {
	code := m.Run()
	if len(results) > 0 {
		flat := map[string]any{}
		for _, r := range results {
			for name, rc := range r.Readers {
				key := r.Case + "." + strings.ReplaceAll(name, " ", "_")
				flat[key+".delivered"] = rc.Delivered
				flat[key+".lost"] = rc.Lost
				flat[key+".wrong"] = rc.Wrong
				flat[key+".mark_ok"] = rc.MarkOK
				flat[key+".unread"] = r.Unread[name]
			}
			flat[r.Case+".written"] = r.Writer.Written
			flat[r.Case+".left"] = r.Left
		}
		if _, err := artifacts.WriteJSON("metrics/tagflow.json", flat); err != nil {
			fmt.Fprintln(os.Stderr, "tagflow: save metrics:", err)
		}
		if _, err := artifacts.WriteJSON("tagflow/cases.json", map[string]any{"kernel": testenv.KernelRelease(), "cases": results}); err != nil {
			fmt.Fprintln(os.Stderr, "tagflow: save cases:", err)
		}
	}
	os.Exit(code)
}

// flow is what a case loads and attaches, and where.
type flow struct {
	t  *testing.T
	tf *bpf.TagFlow
}

// load loads the programs, attaches the free hooks, the clone watcher, the
// traced readers and the cgroup reader (root cgroup: every namespace).
func load(t *testing.T) *flow {
	t.Helper()
	tf, err := bpf.LoadTagFlow(bpf.TagFlowOptions{Port: port})
	if err != nil {
		var le *bpf.LoadError
		if errors.As(err, &le) {
			for _, f := range le.Failed {
				artifacts.Save(t, "verifier/tagflow/"+f.Program+".log", []byte(f.Log))
			}
		}
		t.Fatalf("load the tag flow programs: %v", err)
	}
	t.Cleanup(func() { tf.Close() })
	for name, log := range tf.VerifierLogs() {
		artifacts.Save(t, "verifier/tagflow/"+name+".log", []byte(log))
	}
	if err := tf.AttachTracing(); errors.Is(err, bpf.ErrNoTrampoline) {
		t.Skipf("attach the readers: %v", err)
	} else {
		require.NoError(t, err)
	}
	require.NoError(t, tf.AttachCgroup("/sys/fs/cgroup"))
	return &flow{t: t, tf: tf}
}

// attachTC attaches prog to dev's clsact hook (ingress or egress) in ns,
// as the hook's first program.
func attachTC(t *testing.T, ns netns.NsHandle, dev string, prog *ebpf.Program, ingress bool) {
	t.Helper()
	attachTCAt(t, ns, dev, prog, ingress, 1)
}

// attachTCAt attaches prog at a priority (and handle) of the hook; lower
// runs first. It goes with the namespace.
func attachTCAt(t *testing.T, ns netns.NsHandle, dev string, prog *ebpf.Program, ingress bool, prio uint16) {
	t.Helper()
	_, err := testenv.AttachTC(ns, dev, prog.FD(), ingress, prio)
	require.NoError(t, err)
}

// sendUDP sends n datagrams of size bytes from src to dst:port and returns
// how many the receiver in dstNS read.
func sendUDP(t *testing.T, srcNS, dstNS netns.NsHandle, dst net.IP, n, size int) int {
	t.Helper()
	var rx net.PacketConn
	require.NoError(t, testenv.InNetns(dstNS, func() (err error) {
		rx, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		return err
	}))
	// Room for a burst: the flow's fate in the stack is measured, not
	// drops at a full receive buffer.
	_ = rx.(*net.UDPConn).SetReadBuffer(8 << 20)
	defer rx.Close()
	got := make(chan int, 1)
	go func() {
		buf := make([]byte, 65536)
		count := 0
		for count < n {
			_ = rx.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, _, err := rx.ReadFrom(buf); err != nil {
				break
			}
			count++
		}
		got <- count
	}()
	var tx net.Conn
	require.NoError(t, testenv.InNetns(srcNS, func() (err error) {
		tx, err = net.Dial("udp4", net.JoinHostPort(dst.String(), fmt.Sprint(port)))
		return err
	}))
	defer tx.Close()
	payload := make([]byte, size)
	binary.BigEndian.PutUint32(payload, tagMagic)
	for i := 0; i < n; i++ {
		binary.BigEndian.PutUint32(payload[4:], uint32(i))
		_, err := tx.Write(payload)
		require.NoError(t, err)
		if i%8 == 7 {
			time.Sleep(time.Millisecond) // the receiver keeps up: drops are not what is measured
		}
	}
	return <-got
}

// sendTCP streams size bytes from srcNS to dst:port and returns the bytes
// the receiver read.
func sendTCP(t *testing.T, srcNS, dstNS netns.NsHandle, dst net.IP, size int) int64 {
	t.Helper()
	var ln net.Listener
	require.NoError(t, testenv.InNetns(dstNS, func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	}))
	defer ln.Close()
	n, _, err := testenv.StreamTCP(ln, func() (c net.Conn, err error) {
		err = testenv.InNetns(srcNS, func() (err error) {
			c, err = net.Dial("tcp4", net.JoinHostPort(dst.String(), fmt.Sprint(port)))
			return err
		})
		return c, err
	}, size)
	require.NoError(t, err)
	return n
}

// openTap opens an AF_PACKET socket on dev in ns, the tap whose packet_rcv
// the tap reader watches; it is closed when the test ends.
func openTap(t *testing.T, ns netns.NsHandle, dev string) {
	t.Helper()
	require.NoError(t, testenv.InNetns(ns, func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		proto := uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(proto))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: l.Attrs().Index})
	}))
}

// finish settles the stack, reads the counters, checks them and records
// the case. expect are the readers the case's traffic must reach.
func (f *flow) finish(name, traffic string, sent int, expect ...bpf.Reader) *caseResult {
	t := f.t
	t.Helper()
	require.NoError(t, testenv.Settle(200*time.Millisecond))
	c, err := f.tf.Counts()
	require.NoError(t, err)
	left, err := f.tf.Entries()
	require.NoError(t, err)
	r := &caseResult{Case: name, Traffic: traffic, Sent: sent, Writer: c.Writer, Readers: map[string]bpf.ReaderCounts{},
		Skipped: f.tf.Skipped(), Left: left, Unread: map[string]uint64{}}
	for rd := bpf.Reader(0); rd < bpf.NumReaders; rd++ {
		if c.Readers[rd].Seen > 0 {
			r.Readers[rd.String()] = c.Readers[rd]
			if c.Writer.Written > c.Readers[rd].Seen {
				r.Unread[rd.String()] = c.Writer.Written - c.Readers[rd].Seen
			}
		}
	}
	check := func(ok bool, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if ok {
			r.Checks = append(r.Checks, "ok: "+msg)
		} else {
			r.Checks = append(r.Checks, "FAILED: "+msg)
			t.Error(msg)
		}
	}
	check(c.Writer.Written > 0, "tc ingress tagged the flow's packets (%d)", c.Writer.Written)
	for _, rd := range expect {
		if !f.tf.Loaded(rd) {
			t.Logf("%s not loaded on this kernel: %v", rd, f.tf.Skipped())
			continue
		}
		rc := c.Readers[rd]
		check(rc.Seen > 0, "%s saw the flow's packets (%d)", rd, rc.Seen)
		check(rc.Delivered+rc.Lost+rc.Wrong == rc.Seen, "%s: delivered %d + lost %d + wrong %d = seen %d", rd, rc.Delivered, rc.Lost, rc.Wrong, rc.Seen)
		check(rc.Delivered <= c.Writer.Written, "%s: delivered %d <= tags written %d", rd, rc.Delivered, c.Writer.Written)
		t.Logf("%-20s seen %5d delivered %5d lost %5d (clones %d, fragments %d) wrong %3d  mark %5d",
			rd, rc.Seen, rc.Delivered, rc.Lost, rc.LostClone, rc.LostFrag, rc.Wrong, rc.MarkOK)
	}
	t.Logf("writer: %+v; %d tags left after settling", c.Writer, left)
	resultsMu.Lock()
	results = append(results, r)
	resultsMu.Unlock()
	artifacts.SaveJSON(t, "tagflow/"+name+".json", r)
	return r
}

// vethCase makes a veth pair, loads the programs and attaches the writer
// to the receiving end's tc ingress.
func vethCase(t *testing.T) (*testenv.VethPair, *flow) {
	t.Helper()
	testenv.RequireGuest(t)
	p, err := testenv.NewVethPair()
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	f := load(t)
	attachTC(t, p.B, "skbst1", f.tf.IngressWriter(), true)
	return p, f
}

// TestUDP: datagrams over a veth pair, tagged at the receiver's tc ingress,
// read at the socket layer and the UDP receive queue.
func TestUDP(t *testing.T) {
	p, f := vethCase(t)
	const n = 200
	got := sendUDP(t, p.A, p.B, p.AddrB, n, 64)
	require.Equal(t, n, got, "datagrams received")
	r := f.finish("udp", "200 x 64-byte UDP datagrams, veth", n, bpf.ReaderCgroup, bpf.ReaderUDPQueue)
	assert.LessOrEqual(t, r.Readers[bpf.ReaderCgroup.String()].Seen, uint64(n), "no more reads than datagrams")
}

// TestUDPFragments: datagrams above the MTU, fragmented by the sender and
// reassembled by the receiver: the socket reads the reassembled skb.
func TestUDPFragments(t *testing.T) {
	p, f := vethCase(t)
	const n = 100
	got := sendUDP(t, p.A, p.B, p.AddrB, n, 3000)
	require.GreaterOrEqual(t, got, n*9/10, "datagrams received (a fragment lost under emulation loses its datagram)")
	r := f.finish("udp-fragments", "100 x 3000-byte UDP datagrams (3 IPv4 fragments each), veth MTU 1500", n, bpf.ReaderCgroup, bpf.ReaderUDPQueue)
	assert.Positive(t, r.Writer.Frags, "non-first fragments reached tc ingress")
}

// TestTCP: a stream over a veth pair; each segment's tag is its sequence
// number.
func TestTCP(t *testing.T) {
	p, f := vethCase(t)
	const size = 1 << 20
	got := sendTCP(t, p.A, p.B, p.AddrB, size)
	require.Equal(t, int64(size), got)
	f.finish("tcp", "1 MiB TCP stream, veth", size, bpf.ReaderCgroup, bpf.ReaderTCPRcv)
}

// TestForward: datagrams from A to B through M, which forwards them; tagged
// at M's ingress, read at M's egress (tc), by an AF_PACKET tap on M's
// outgoing device, and at B's socket after crossing into B's namespace.
func TestForward(t *testing.T) {
	testenv.RequireGuest(t)
	c, err := testenv.NewChain()
	require.NoError(t, err)
	defer c.Close()
	f := load(t)
	attachTC(t, c.M, c.MIn, f.tf.IngressWriter(), true)
	attachTC(t, c.M, c.MOut, f.tf.EgressReader(), false)
	openTap(t, c.M, c.MOut)
	const n = 200
	got := sendUDP(t, c.A, c.B, c.AddrB, n, 64)
	require.Equal(t, n, got, "datagrams received")
	f.finish("forward", "200 x 64-byte UDP datagrams, A -> M (forwards) -> B", n,
		bpf.ReaderTCEgress, bpf.ReaderTap, bpf.ReaderCgroup, bpf.ReaderUDPQueue)
}

// TestTCPGRO: a stream sent in MSS-sized segments (TSO and GSO off at the
// sender), received with GRO off (veth without NAPI: one skb per segment)
// and on (an XDP program puts the receiving veth in NAPI, where GRO merges
// segments before tc ingress sees them): per-packet tags become per-batch.
func TestTCPGRO(t *testing.T) {
	testenv.RequireGuest(t)
	const size = 1 << 20
	written := map[bool]uint64{}
	for _, gro := range []bool{false, true} {
		name := map[bool]string{false: "tcp-segments-gro-off", true: "tcp-segments-gro-on"}[gro]
		t.Run(name, func(t *testing.T) {
			p, err := testenv.NewVethPair()
			require.NoError(t, err)
			defer p.Close()
			require.NoError(t, testenv.NoSegmentationOffload(p.A, "skbst0"))
			f := load(t)
			if gro {
				require.NoError(t, testenv.InNetns(p.B, func() error {
					l, err := netlink.LinkByName("skbst1")
					if err != nil {
						return err
					}
					return netlink.LinkSetXdpFd(l, f.tf.XDPPass().FD())
				}), "attach XDP to the receiving veth")
			}
			attachTC(t, p.B, "skbst1", f.tf.IngressWriter(), true)
			got := sendTCP(t, p.A, p.B, p.AddrB, size)
			require.Equal(t, int64(size), got)
			traffic := "1 MiB TCP stream in MSS-sized segments (sender TSO/GSO off), veth, GRO off"
			if gro {
				traffic = "1 MiB TCP stream in MSS-sized segments (sender TSO/GSO off), veth in NAPI (XDP pass), GRO on"
			}
			r := f.finish(name, traffic, size, bpf.ReaderCgroup, bpf.ReaderTCPRcv)
			written[gro] = r.Writer.Written
		})
	}
	if written[false] > 0 && written[true] > 0 {
		t.Logf("tags written: %d with GRO off, %d with GRO on (%.1f segments per tagged skb)",
			written[false], written[true], float64(written[false])/float64(written[true]))
		assert.GreaterOrEqual(t, written[false], uint64(size/1500), "GRO off: about one skb per MSS segment")
	}
}

// TestVXLAN: datagrams through a VXLAN tunnel over the veth pair; tagged at
// the underlay's tc ingress (the tag is read from the inner packet), read
// at the socket after decapsulation.
func TestVXLAN(t *testing.T) {
	testenv.RequireGuest(t)
	p, err := testenv.NewVethPair()
	require.NoError(t, err)
	defer p.Close()
	inner := map[netns.NsHandle]net.IP{p.A: net.IPv4(10, 99, 0, 1).To4(), p.B: net.IPv4(10, 99, 0, 2).To4()}
	remote := map[netns.NsHandle]net.IP{p.A: p.AddrB, p.B: p.AddrA}
	underlay := map[netns.NsHandle]string{p.A: "skbst0", p.B: "skbst1"}
	for _, ns := range []netns.NsHandle{p.A, p.B} {
		h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
		require.NoError(t, err)
		defer h.Close()
		under, err := h.LinkByName(underlay[ns])
		require.NoError(t, err)
		vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "tfvx0", MTU: 1400}, VxlanId: 42, VtepDevIndex: under.Attrs().Index,
			Group: remote[ns], Port: 4789, Learning: false}
		require.NoError(t, h.LinkAdd(vx), "add vxlan (module vxlan)")
		l, err := h.LinkByName("tfvx0")
		require.NoError(t, err)
		require.NoError(t, h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: inner[ns], Mask: net.CIDRMask(24, 32)}}))
		require.NoError(t, h.LinkSetUp(l))
	}
	f := load(t)
	attachTC(t, p.B, "skbst1", f.tf.IngressWriter(), true)
	const n = 200
	got := sendUDP(t, p.A, p.B, inner[p.B], n, 64)
	require.Equal(t, n, got, "datagrams received through the tunnel")
	f.finish("vxlan", "200 x 64-byte UDP datagrams in VXLAN over veth, tagged at the underlay's ingress", n,
		bpf.ReaderCgroup, bpf.ReaderUDPQueue)
}

// TestXDPMeta: the other baseline, XDP metadata. An XDP program on the
// receiving veth puts each datagram's tag in data_meta; a tc ingress
// program reads it there (no later layer can read data_meta), beside the
// map's writer and readers.
func TestXDPMeta(t *testing.T) {
	p, f := vethCase(t)
	require.NoError(t, testenv.InNetns(p.B, func() error {
		l, err := netlink.LinkByName("skbst1")
		if err != nil {
			return err
		}
		return netlink.LinkSetXdpFd(l, f.tf.XDPMeta().FD())
	}), "attach the XDP metadata writer")
	attachTCAt(t, p.B, "skbst1", f.tf.MetaReader(), true, 2)
	const n = 200
	got := sendUDP(t, p.A, p.B, p.AddrB, n, 64)
	require.Equal(t, n, got, "datagrams received")
	f.finish("xdp-meta", "200 x 64-byte UDP datagrams, veth with an XDP program writing data_meta", n,
		bpf.ReaderXDPMeta, bpf.ReaderCgroup, bpf.ReaderUDPQueue)
}
