package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNoVeth is wrapped when the kernel cannot create veth devices.
var ErrNoVeth = errors.New("veth not available")

// InNetns runs fn on a fresh OS thread that has entered ns. The thread is
// thrown away afterwards, so the caller's namespace never changes. Sockets
// made by fn stay in ns and can be used from any goroutine.
func InNetns(ns netns.NsHandle, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		// Not unlocked: the runtime ends the thread with the goroutine.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			done <- fmt.Errorf("enter netns: %w", err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// NewNetns creates a network namespace with its loopback up and IPv6 off,
// without moving the calling thread into it.
func NewNetns() (netns.NsHandle, error) {
	type res struct {
		h   netns.NsHandle
		err error
	}
	done := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.New()
		if err == nil {
			var lo netlink.Link
			if lo, err = netlink.LinkByName("lo"); err == nil {
				err = netlink.LinkSetUp(lo)
			}
			// No IPv6: its autoconfiguration traffic on the veth would
			// mix with the test's. Kernels without IPv6 lack the files.
			_ = os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte("1"), 0o644)
			_ = os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0o644)
			if err != nil {
				h.Close()
			}
		}
		done <- res{h, err}
	}()
	r := <-done
	if r.err != nil {
		return netns.None(), fmt.Errorf("create netns: %w", r.err)
	}
	return r.h, nil
}

// VethPair is two network namespaces joined by a veth pair. Addresses are
// from TEST-NET-1 (192.0.2.0/24) and exist only in these namespaces.
type VethPair struct {
	// A and B are the namespaces.
	A, B netns.NsHandle
	// AddrA and AddrB are the veth ends' addresses in A and B.
	AddrA, AddrB net.IP
}

// NewVethPair creates two namespaces and a veth pair between them. It
// returns an error wrapping ErrNoVeth if the kernel has no veth driver.
func NewVethPair() (*VethPair, error) {
	a, err := NewNetns()
	if err != nil {
		return nil, err
	}
	b, err := NewNetns()
	if err != nil {
		a.Close()
		return nil, err
	}
	p := &VethPair{A: a, B: b, AddrA: net.IPv4(192, 0, 2, 1).To4(), AddrB: net.IPv4(192, 0, 2, 2).To4()}
	if err := p.setup(); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func (p *VethPair) setup() error {
	ha, err := netlink.NewHandleAt(p.A, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink in netns A: %w", err)
	}
	defer ha.Close()
	hb, err := netlink.NewHandleAt(p.B, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink in netns B: %w", err)
	}
	defer hb.Close()

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "skbst0"}, PeerName: "skbst1", PeerNamespace: netlink.NsFd(int(p.B))}
	if err := ha.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENODEV) || strings.Contains(err.Error(), "not supported") {
			return fmt.Errorf("create veth pair: %v: %w", err, ErrNoVeth)
		}
		return fmt.Errorf("create veth pair: %w", err)
	}
	for _, side := range []struct {
		h    *netlink.Handle
		name string
		ip   net.IP
	}{{ha, "skbst0", p.AddrA}, {hb, "skbst1", p.AddrB}} {
		l, err := side.h.LinkByName(side.name)
		if err != nil {
			return fmt.Errorf("find %s: %w", side.name, err)
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: side.ip, Mask: net.CIDRMask(24, 32)}}
		if err := side.h.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("address %s: %w", side.name, err)
		}
		if err := side.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", side.name, err)
		}
	}
	return nil
}

// Close releases both namespaces; the veth pair goes with them.
func (p *VethPair) Close() error {
	return errors.Join(p.A.Close(), p.B.Close())
}
