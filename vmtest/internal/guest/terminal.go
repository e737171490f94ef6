//go:build linux

package guest

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// defaultConsole is the guest's console when the job names none
// (console=ttyS0 on x86): QEMU connects it to the host's terminal for
// vmtest shell.
const defaultConsole = "/dev/ttyS0"

// onTerminal makes the console cmd's standard input, output and error and
// its controlling terminal, in a session of its own: Ctrl-C there signals
// its foreground job. The caller closes the terminal when cmd is done.
func onTerminal(console string, cmd *exec.Cmd) (*os.File, error) {
	tty, err := openTerminal(console, cmd.Env)
	if err != nil {
		return nil, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	return tty, nil
}

// openTerminal readies the console for an interactive command: a sane line
// discipline (echo, line editing, Ctrl-C as SIGINT, CR to NL), the host
// terminal's size from COLUMNS and LINES in env, and kernel messages kept off
// it (they still reach the host's dmesg.log).
func openTerminal(console string, env []string) (*os.File, error) {
	if console == "" {
		console = defaultConsole
	}
	f, err := os.OpenFile(console, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		f.Close()
		return nil, err
	}
	t.Iflag |= unix.ICRNL | unix.IXON
	t.Iflag &^= unix.INLCR | unix.IGNCR
	t.Oflag |= unix.OPOST | unix.ONLCR
	t.Lflag |= unix.ECHO | unix.ECHOE | unix.ECHOK | unix.ICANON | unix.ISIG | unix.IEXTEN
	if err := unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t); err != nil {
		f.Close()
		return nil, err
	}
	ws := &unix.Winsize{Row: 24, Col: 80}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > 1000 {
			continue
		}
		switch k {
		case "COLUMNS":
			ws.Col = uint16(n)
		case "LINES":
			ws.Row = uint16(n)
		}
	}
	_ = unix.IoctlSetWinsize(int(f.Fd()), unix.TIOCSWINSZ, ws)
	_ = os.WriteFile("/proc/sys/kernel/printk", []byte("1"), 0o644)
	return f, nil
}
