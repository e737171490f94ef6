//go:build linux

package ioport

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// outb writes val to port; the calling thread must have ioperm for it.
func outb(port uint16, val uint8)

func write(port uint16, val byte) error {
	// ioperm grants the port to the calling thread only: the goroutine
	// must not move to another between the two, or the outb faults (it
	// did, once in 47 guests, in an agent that had served many commands).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Ioperm(int(port), 1, 1); err != nil {
		return err
	}
	outb(port, val)
	return nil
}
