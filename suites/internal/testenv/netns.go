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

// Chain is three network namespaces in a line, A - M - B, with M routing
// between two veth pairs: A (192.0.2.1) reaches B (198.51.100.2) through M.
type Chain struct {
	A, M, B netns.NsHandle
	// AddrA and AddrB are the end hosts' addresses.
	AddrA, AddrB net.IP
	// MIn and MOut are M's devices towards A and towards B.
	MIn, MOut string
}

// NewChain makes the namespaces, the two veth pairs and the routes, and
// turns forwarding on in M.
func NewChain() (*Chain, error) {
	c := &Chain{A: netns.None(), M: netns.None(), B: netns.None(),
		AddrA: net.IPv4(192, 0, 2, 1).To4(), AddrB: net.IPv4(198, 51, 100, 2).To4(), MIn: "tfm0", MOut: "tfm1"}
	var err error
	for _, ns := range []*netns.NsHandle{&c.A, &c.M, &c.B} {
		if *ns, err = NewNetns(); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.setup(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Chain) setup() error {
	handles := map[netns.NsHandle]*netlink.Handle{}
	for _, ns := range []netns.NsHandle{c.A, c.M, c.B} {
		h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		handles[ns] = h
	}
	type end struct {
		ns   netns.NsHandle
		name string
		ip   net.IP
		mask int
	}
	pairs := [][2]end{
		{{c.A, "tfa0", c.AddrA, 24}, {c.M, c.MIn, net.IPv4(192, 0, 2, 254).To4(), 24}},
		{{c.M, c.MOut, net.IPv4(198, 51, 100, 254).To4(), 24}, {c.B, "tfb0", c.AddrB, 24}},
	}
	for _, p := range pairs {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p[0].name}, PeerName: p[1].name, PeerNamespace: netlink.NsFd(int(p[1].ns))}
		if err := handles[p[0].ns].LinkAdd(veth); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) || strings.Contains(err.Error(), "not supported") {
				return fmt.Errorf("create veth pair: %v: %w", err, ErrNoVeth)
			}
			return fmt.Errorf("create veth %s: %w", p[0].name, err)
		}
		for _, e := range p {
			h := handles[e.ns]
			l, err := h.LinkByName(e.name)
			if err != nil {
				return fmt.Errorf("find %s: %w", e.name, err)
			}
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: e.ip, Mask: net.CIDRMask(e.mask, 32)}}); err != nil {
				return fmt.Errorf("address %s: %w", e.name, err)
			}
			if err := h.LinkSetUp(l); err != nil {
				return fmt.Errorf("set %s up: %w", e.name, err)
			}
		}
	}
	for _, r := range []struct {
		ns  netns.NsHandle
		dst *net.IPNet
		gw  net.IP
	}{
		{c.A, &net.IPNet{IP: net.IPv4(198, 51, 100, 0).To4(), Mask: net.CIDRMask(24, 32)}, net.IPv4(192, 0, 2, 254).To4()},
		{c.B, &net.IPNet{IP: net.IPv4(192, 0, 2, 0).To4(), Mask: net.CIDRMask(24, 32)}, net.IPv4(198, 51, 100, 254).To4()},
	} {
		if err := handles[r.ns].RouteAdd(&netlink.Route{Dst: r.dst, Gw: r.gw}); err != nil {
			return fmt.Errorf("route to %s: %w", r.dst, err)
		}
	}
	return InNetns(c.M, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	})
}

// Close releases the namespaces; the devices go with them.
func (c *Chain) Close() error {
	var errs []error
	for _, ns := range []netns.NsHandle{c.A, c.M, c.B} {
		if ns.IsOpen() {
			errs = append(errs, ns.Close())
		}
	}
	return errors.Join(errs...)
}
