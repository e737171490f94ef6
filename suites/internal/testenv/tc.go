package testenv

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// AttachTC attaches the tc (sched_cls) program fd, direct action, to dev's
// clsact ingress or egress hook in ns at priority prio (lower runs first),
// adding the clsact qdisc if dev has none. remove deletes the qdisc, and
// with it every program on both hooks.
func AttachTC(ns netns.NsHandle, dev string, fd int, ingress bool, prio uint16) (remove func() error, err error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	// Not kept open: a netlink socket holds its namespace alive.
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", dev, err)
	}
	qdisc := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	if err := h.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("add clsact to %s: %w", dev, err)
	}
	parent := uint32(netlink.HANDLE_MIN_EGRESS)
	if ingress {
		parent = netlink.HANDLE_MIN_INGRESS
	}
	filter := &netlink.BpfFilter{
		FilterAttrs:  netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: parent, Handle: uint32(prio), Protocol: unix.ETH_P_ALL, Priority: prio},
		Fd:           fd,
		Name:         "tagflow",
		DirectAction: true,
	}
	if err := h.FilterAdd(filter); err != nil {
		return nil, fmt.Errorf("attach tc program to %s: %w", dev, err)
	}
	return func() error {
		h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		return h.QdiscDel(qdisc)
	}, nil
}
