//go:build linux && !amd64

package ioport

func write(port uint16, val byte) error { return ErrNoPorts }
