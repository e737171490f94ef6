//go:build linux

// Command floorinit is the smallest useful guest: a static /init that prints
// one line and powers off. Booting it measures what QEMU and the kernel cost
// by themselves, the floor against which vmtest's own overhead is measured.
package main

import (
	"os"

	"golang.org/x/sys/unix"
)

func main() {
	os.Stdout.WriteString("floorinit: reached /init\n")
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
