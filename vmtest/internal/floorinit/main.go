//go:build linux

// Command floorinit is the smallest useful guest: a static /init that prints
// one line and powers off. Booting it measures what QEMU and the kernel cost
// by themselves, the floor against which vmtest's own overhead is measured.
//
// When the initramfs also holds /test (vmtest bench's "floor + test"), it
// first runs that test binary with the arguments in /test.args, one per
// line, on the console, and says how it ended: what any runner of a Go test
// pays at least (a second Go program started under the same emulation),
// with no file system, disk, module or result port set up.
package main

import (
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	os.Stdout.WriteString("floorinit: reached /init\n")
	if _, err := os.Stat("/test"); err == nil {
		runTest()
	}
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func runTest() {
	var args []string
	if b, err := os.ReadFile("/test.args"); err == nil {
		args = strings.FieldsFunc(string(b), func(r rune) bool { return r == '\n' })
	}
	cmd := exec.Command("/test", args...)
	// The tests that run only in a vmtest guest look for this.
	cmd.Env = append(os.Environ(), "VMTEST_GUEST=1")
	// The console for all three: there is no /dev/null to give it.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stdout
	if err := cmd.Run(); err != nil {
		os.Stdout.WriteString("floorinit: test failed: " + err.Error() + "\n")
		return
	}
	os.Stdout.WriteString("floorinit: test passed\n")
}
