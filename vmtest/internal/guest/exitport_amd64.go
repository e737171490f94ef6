//go:build linux

package guest

import "golang.org/x/sys/unix"

// outb writes val to an x86 I/O port; the caller must have ioperm for it.
func outb(port uint16, val uint8)

// writePort writes val to I/O port port: Debian's kernels have no
// /dev/port (CONFIG_DEVPORT is off), so the agent asks for the port itself.
func writePort(port int64, val byte) error {
	if err := unix.Ioperm(int(port), 1, 1); err != nil {
		return err
	}
	outb(uint16(port), val)
	return nil
}
