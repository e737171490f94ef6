package skbbench

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"github.com/skbstore/skbstore/suites/internal/testenv"
)

const (
	// udpDatagrams is the number of timed datagrams per UDP trial.
	udpDatagrams = 1500
	// udpWarmup datagrams are exchanged before the clock starts (ARP on
	// veth, socket set-up).
	udpWarmup = 20
	// udpSize is the UDP payload size.
	udpSize = 64
	// tcpBytes is what a TCP trial sends.
	tcpBytes = 4 << 20
	// tcpPacketBytes converts TCP bytes to packets: the payload of a
	// full-sized segment at a 1500-byte MTU with timestamps.
	tcpPacketBytes = 1448
)

// endpoints says where a workload's two ends live: the current network
// namespace (loopback) or the two ends of a veth pair.
type endpoints struct {
	// pair is nil for loopback.
	pair *testenv.VethPair
}

func (e endpoints) rxAddr() string {
	if e.pair == nil {
		return "127.0.0.1"
	}
	return e.pair.AddrB.String()
}

// inRx and inTx run fn in the receiver's and the sender's namespace.
func (e endpoints) inRx(fn func() error) error {
	if e.pair == nil {
		return fn()
	}
	return testenv.InNetns(e.pair.B, fn)
}

func (e endpoints) inTx(fn func() error) error {
	if e.pair == nil {
		return fn()
	}
	return testenv.InNetns(e.pair.A, fn)
}

// namespaces are the namespaces whose TCP segments a trial counts.
func (e endpoints) namespaces() []netns.NsHandle {
	if e.pair == nil {
		return []netns.NsHandle{netns.None()}
	}
	return []netns.NsHandle{e.pair.A, e.pair.B}
}

// trial is one timed run of a workload.
type trial struct {
	packets uint64
	elapsed time.Duration
	// segments are the TCP segments actually sent, both ways.
	segments uint64
}

func (t trial) pps() float64 {
	if t.elapsed <= 0 {
		return 0
	}
	return float64(t.packets) / t.elapsed.Seconds()
}

// udpTrial sends udpDatagrams datagrams, each read by the receiver before
// the next is sent, and times them. Every datagram is one skb.
func udpTrial(e endpoints) (trial, error) { return udpTrialWith(e, 0, nil) }

// udpTrialWith is udpTrial to a given port (0: any), with stamp writing
// datagram i's payload (nil: zeros).
func udpTrialWith(e endpoints, port int, stamp func(msg []byte, i int)) (trial, error) {
	var rx *net.UDPConn
	if err := e.inRx(func() (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(e.rxAddr()), Port: port})
		return err
	}); err != nil {
		return trial{}, fmt.Errorf("listen udp: %w", err)
	}
	defer rx.Close()
	var tx *net.UDPConn
	if err := e.inTx(func() (err error) {
		tx, err = net.DialUDP("udp4", nil, rx.LocalAddr().(*net.UDPAddr))
		return err
	}); err != nil {
		return trial{}, fmt.Errorf("dial udp: %w", err)
	}
	defer tx.Close()
	msg := make([]byte, udpSize)
	buf := make([]byte, 2048)
	exchange := func(n int) error {
		for i := 0; i < n; i++ {
			if stamp != nil {
				stamp(msg, i)
			}
			if _, err := tx.Write(msg); err != nil {
				return fmt.Errorf("send datagram %d: %w", i, err)
			}
			if err := rx.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
				return err
			}
			if _, err := rx.Read(buf); err != nil {
				return fmt.Errorf("receive datagram %d: %w", i, err)
			}
		}
		return nil
	}
	if err := exchange(udpWarmup); err != nil {
		return trial{}, fmt.Errorf("warm-up: %w", err)
	}
	start := time.Now()
	if err := exchange(udpDatagrams); err != nil {
		return trial{}, err
	}
	return trial{packets: udpDatagrams, elapsed: time.Since(start)}, nil
}

// tcpTrial streams tcpBytes over a fresh connection and times it from the
// dial to the receiver's end of stream. Its packets are the workload's
// fixed size in full-sized segments (tcpBytes / tcpPacketBytes), so that
// packets/s is proportional to throughput: the segments actually sent
// (OutSegs, both ways, recorded as segments) depend on the stack's speed,
// a slower stack sending more, smaller segments and ACKs, which would make
// a slower configuration look faster.
func tcpTrial(e endpoints) (trial, error) {
	var ln net.Listener
	if err := e.inRx(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(e.rxAddr(), "0"))
		return err
	}); err != nil {
		return trial{}, fmt.Errorf("listen tcp: %w", err)
	}
	defer ln.Close()
	segsBefore, err := outSegs(e.namespaces())
	if err != nil {
		return trial{}, err
	}
	n, elapsed, err := testenv.StreamTCP(ln, func() (c net.Conn, err error) {
		err = e.inTx(func() (err error) {
			c, err = net.Dial("tcp4", ln.Addr().String())
			return err
		})
		return c, err
	}, tcpBytes)
	if err != nil {
		return trial{}, fmt.Errorf("tcp: %w", err)
	}
	if n != tcpBytes {
		return trial{}, fmt.Errorf("received %d of %d bytes", n, tcpBytes)
	}
	segsAfter, err := outSegs(e.namespaces())
	if err != nil {
		return trial{}, err
	}
	if segsAfter <= segsBefore {
		return trial{}, fmt.Errorf("TCP OutSegs did not grow (%d -> %d)", segsBefore, segsAfter)
	}
	return trial{packets: tcpBytes / tcpPacketBytes, elapsed: elapsed, segments: segsAfter - segsBefore}, nil
}

// outSegs sums the TCP OutSegs counter of the namespaces; netns.None()
// means the caller's.
func outSegs(nss []netns.NsHandle) (uint64, error) {
	var total uint64
	for _, ns := range nss {
		var n uint64
		read := func() (err error) {
			n, err = readOutSegs()
			return err
		}
		var err error
		if ns == netns.None() {
			err = read()
		} else {
			err = testenv.InNetns(ns, read)
		}
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// readOutSegs reads Tcp OutSegs from the calling thread's namespace.
func readOutSegs() (uint64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f, err := os.Open("/proc/thread-self/net/snmp")
	if err != nil {
		return 0, fmt.Errorf("read TCP counters: %w", err)
	}
	defer f.Close()
	var header []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "Tcp:" {
			continue
		}
		if header == nil {
			header = fields
			continue
		}
		for i, name := range header {
			if name == "OutSegs" && i < len(fields) {
				v, err := strconv.ParseUint(fields[i], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("parse OutSegs %q: %w", fields[i], err)
				}
				return v, nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read TCP counters: %w", err)
	}
	return 0, errors.New("no Tcp OutSegs in /proc/thread-self/net/snmp")
}
