//go:build linux

package ioport

import "golang.org/x/sys/unix"

// outb writes val to port; the caller must have ioperm for it.
func outb(port uint16, val uint8)

func write(port uint16, val byte) error {
	if err := unix.Ioperm(int(port), 1, 1); err != nil {
		return err
	}
	outb(port, val)
	return nil
}
