package sample

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// A few rtnetlink requests by hand, so that the sample (and the runner's
// module) needs no netlink library: what TestAutoload asks the kernel for.

// rtnl sends one request on a NETLINK_ROUTE socket and returns the error
// of its acknowledgement.
func rtnl(typ, flags uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	msg = append(msg, body...)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|flags)
	binary.NativeEndian.PutUint32(msg[8:], 1)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 1<<16)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	if n < unix.SizeofNlMsghdr+4 || binary.NativeEndian.Uint16(buf[4:]) != unix.NLMSG_ERROR {
		return fmt.Errorf("rtnetlink: unexpected answer of %d bytes", n)
	}
	if errno := -int32(binary.NativeEndian.Uint32(buf[unix.SizeofNlMsghdr:])); errno != 0 {
		return syscall.Errno(errno)
	}
	return nil
}

// attr encodes one netlink attribute; nested ones are attrs of attrs.
func attr(typ uint16, data ...[]byte) []byte {
	var payload []byte
	for _, d := range data {
		payload = append(payload, d...)
	}
	b := make([]byte, 4, 4+len(payload)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(payload)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// addGeneve creates a geneve link: the kernel loads geneve
// (rtnl-link-geneve) if it is a module.
func addGeneve(name string, vni uint32, remote [4]byte) error {
	ifinfo := make([]byte, unix.SizeofIfInfomsg)
	body := append(ifinfo, attr(unix.IFLA_IFNAME, append([]byte(name), 0))...)
	body = append(body, attr(unix.IFLA_LINKINFO,
		attr(unix.IFLA_INFO_KIND, []byte("geneve")),
		attr(unix.IFLA_INFO_DATA, attr(unix.IFLA_GENEVE_ID, u32(vni)), attr(unix.IFLA_GENEVE_REMOTE, remote[:])))...)
	return rtnl(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body)
}

const (
	tcHClsact           = 0xFFFFFFF1
	tcHIngress          = 0xFFFFFFF2 // clsact's ingress hook
	tcaFlowerKeyEthType = 8
)

// tcmsg is struct tcmsg: family, padding, ifindex, handle, parent, info.
func tcmsg(ifindex int, handle, parent, info uint32) []byte {
	b := make([]byte, 4)
	b = binary.NativeEndian.AppendUint32(b, uint32(ifindex))
	b = binary.NativeEndian.AppendUint32(b, handle)
	b = binary.NativeEndian.AppendUint32(b, parent)
	return binary.NativeEndian.AppendUint32(b, info)
}

// addClsact adds a clsact qdisc (module sch_ingress).
func addClsact(ifindex int) error {
	body := append(tcmsg(ifindex, 0xFFFF0000, tcHClsact, 0), attr(unix.TCA_KIND, []byte("clsact\x00"))...)
	return rtnl(unix.RTM_NEWQDISC, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body)
}

// addFlower adds a flower filter matching IPv4 at clsact's ingress (module
// cls_flower).
func addFlower(ifindex int) error {
	ethIP := binary.BigEndian.AppendUint16(nil, unix.ETH_P_IP)
	info := uint32(1)<<16 | uint32(binary.NativeEndian.Uint16(ethIP)) // priority 1, protocol in network order
	body := append(tcmsg(ifindex, 0, tcHIngress, info), attr(unix.TCA_KIND, []byte("flower\x00"))...)
	body = append(body, attr(unix.TCA_OPTIONS, attr(tcaFlowerKeyEthType, ethIP))...)
	return rtnl(unix.RTM_NEWTFILTER, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body)
}
