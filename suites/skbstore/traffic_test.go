package skbstore

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/suites/internal/testenv"
)

// udpPair is a receiving socket and a sender connected to it.
type udpPair struct {
	rx *net.UDPConn
	tx *net.UDPConn
}

func newUDPPair(addr string) (*udpPair, error) {
	rx, err := net.ListenUDP("udp4", mustResolve(addr))
	if err != nil {
		return nil, fmt.Errorf("listen udp: %w", err)
	}
	tx, err := net.DialUDP("udp4", nil, rx.LocalAddr().(*net.UDPAddr))
	if err != nil {
		rx.Close()
		return nil, fmt.Errorf("dial udp: %w", err)
	}
	return &udpPair{rx: rx, tx: tx}, nil
}

func (p *udpPair) Close() error { return errors.Join(p.tx.Close(), p.rx.Close()) }

func mustResolve(addr string) *net.UDPAddr {
	a, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		panic(err)
	}
	return a
}

// send writes n datagrams of size bytes; each starts with its index.
func send(c *net.UDPConn, n, size int) (int, error) {
	buf := make([]byte, size)
	for i := 0; i < n; i++ {
		buf[0], buf[1] = byte(i), byte(i>>8)
		if _, err := c.Write(buf); err != nil {
			return i, fmt.Errorf("send datagram %d: %w", i, err)
		}
	}
	return n, nil
}

// drain reads datagrams until want have arrived (want > 0) or none has
// for idle, returning the count. A datagram beyond want, if any, stays
// queued: the socket has no sender but the test's.
func drain(c *net.UDPConn, want int, idle time.Duration) int {
	buf := make([]byte, 65536)
	n := 0
	for want <= 0 || n < want {
		_ = c.SetReadDeadline(time.Now().Add(idle))
		if _, err := c.Read(buf); err != nil {
			return n
		}
		n++
	}
	return n
}

// drainDelivered reads the datagrams the stack has delivered to c of those
// sent over loopback so far, for traffic of which some are dropped. A
// loopback datagram from every CPU (testenv.Settle) queues behind the
// test's own on each CPU's backlog: once they are through, every earlier
// datagram is queued on c or dropped, so no idle time has to be waited out.
func drainDelivered(t *testing.T, c *net.UDPConn) int {
	t.Helper()
	if err := testenv.Settle(0); err != nil {
		t.Logf("settle: %v", err)
	}
	return drain(c, 0, 20*time.Millisecond)
}

// setsockoptInt sets an integer socket option on c.
func setsockoptInt(c syscall.Conn, level, opt, v int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), level, opt, v) }); err != nil {
		return err
	}
	return serr
}

// attachDropAllFilter attaches a classic BPF socket filter that drops
// every packet ("ret #0"), so the stack frees them as filtered.
func attachDropAllFilter(c syscall.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	filter := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog)
	}); err != nil {
		return err
	}
	return serr
}

// freeUDPPort returns a loopback port with no listener.
func freeUDPPort() (int, error) {
	c, err := net.ListenUDP("udp4", mustResolve("127.0.0.1:0"))
	if err != nil {
		return 0, err
	}
	port := c.LocalAddr().(*net.UDPAddr).Port
	return port, c.Close()
}

// packetSocket is an AF_PACKET socket receiving every frame on one
// interface: the stack then clones each skb to deliver it.
type packetSocket struct{ fd int }

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func newPacketSocket(ifname string, rcvbuf int) (*packetSocket, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", ifname, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("AF_PACKET socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("SO_RCVBUFFORCE: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind AF_PACKET to %s: %w", ifname, err)
	}
	return &packetSocket{fd: fd}, nil
}

// drainUDPTo reads every queued frame without blocking and returns how
// many frames there were and how many were IPv4/UDP to dport.
func (p *packetSocket) drainUDPTo(dport int) (total, ours int) {
	buf := make([]byte, 65536)
	for {
		n, _, err := unix.Recvfrom(p.fd, buf, unix.MSG_DONTWAIT)
		if err != nil {
			return total, ours
		}
		total++
		// Loopback frames carry a 14-byte Ethernet header.
		f := buf[:n]
		if len(f) < 14+20+8 || f[12] != 0x08 || f[13] != 0x00 {
			continue
		}
		ip := f[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != unix.IPPROTO_UDP || len(ip) < ihl+8 {
			continue
		}
		if int(ip[ihl+2])<<8|int(ip[ihl+3]) == dport {
			ours++
		}
	}
}

// dropStats returns the socket's packet counters (PACKET_STATISTICS).
func (p *packetSocket) dropStats() (packets, drops uint32, err error) {
	var st unix.TpacketStats
	l := uint32(unsafe.Sizeof(st))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(p.fd), unix.SOL_PACKET, unix.PACKET_STATISTICS, uintptr(unsafe.Pointer(&st)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, 0, e
	}
	return st.Packets, st.Drops, nil
}

func (p *packetSocket) Close() error { return unix.Close(p.fd) }
