//go:build linux

// Package ioport writes x86 I/O ports from user space, as root: the guest
// agent ends a guest through QEMU's isa-debug-exit device with it (Debian's
// kernels have no /dev/port), and vmtest's hostile test package tries the
// same to pass for the agent.
package ioport

import "errors"

// ErrNoPorts is returned on architectures without I/O ports.
var ErrNoPorts = errors.New("no I/O ports on this architecture")

// Write writes val to I/O port port, asking the kernel for access to it
// first (ioperm).
func Write(port uint16, val byte) error { return write(port, val) }
