package testenv

import (
	"fmt"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Legacy ethtool commands (UAPI linux/ethtool.h) that set one offload.
const (
	ethtoolSTSO = 0x1f
	ethtoolSGSO = 0x24
)

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct{ cmd, data uint32 }

// ifreqData is struct ifreq with its union as a pointer (typed, so that
// the runtime knows it points at value).
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [16]byte
}

// NoSegmentationOffload turns TSO and GSO off on dev in ns, so that TCP
// leaves the sender in MSS-sized segments, as on a wire.
func NoSegmentationOffload(ns netns.NsHandle, dev string) error {
	return InNetns(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for _, cmd := range []uint32{ethtoolSTSO, ethtoolSGSO} {
			value := ethtoolValue{cmd: cmd}
			var ifr ifreqData
			copy(ifr.name[:unix.IFNAMSIZ-1], dev)
			ifr.data = unsafe.Pointer(&value)
			if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
				return fmt.Errorf("ethtool %#x on %s: %w", cmd, dev, errno)
			}
		}
		return nil
	})
}
