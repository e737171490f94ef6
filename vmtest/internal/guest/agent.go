//go:build linux

// Package guest is the agent that runs inside the VM, as PID 1 or as u-root's
// uinit: it prepares the system (file systems, loopback, kernel modules), runs
// the job's commands, streams their output, artifacts and the kernel log over
// the result port and powers the VM off.
package guest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skbstore/vmtest/vmtest/internal/proto"
)

// Main runs the agent and never returns: the VM is powered off at the end,
// whatever happened, so the host sees the guest exit rather than a hang.
func Main() {
	log.SetPrefix("vmtest-guest: ")
	log.SetFlags(0)
	var rootfs <-chan []error
	if os.Getpid() == 1 {
		rootfs = initRootfs()
	}
	err := run(rootfs)
	if err != nil {
		log.Printf("%v", err)
	}
	unix.Sync()
	if os.Getpid() != 1 && os.Getenv("VMTEST_GUEST_NO_POWEROFF") != "" {
		os.Exit(boolToCode(err != nil))
	}
	if perr := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); perr != nil {
		log.Printf("power off: %v", perr)
	}
	select {}
}

func boolToCode(b bool) int {
	if b {
		return 1
	}
	return 0
}

// run does the job. rootfs, when the agent is PID 1, delivers the errors of
// the file system set-up that runs meanwhile.
func run(rootfs <-chan []error) error {
	job, err := readJob(proto.JobPath)
	if err != nil {
		return err
	}
	port := job.ResultPort
	if port == "" {
		port = "/dev/ttyS1"
	}
	f, err := openPort(port)
	if err != nil {
		return err
	}
	defer f.Close()
	w := proto.NewWriter(f)
	a := &agent{w: w}
	a.hello()
	kmsg, err := startKmsg(w)
	if err != nil {
		a.logf("%v", err)
	}
	if rootfs != nil {
		for _, err := range <-rootfs {
			a.logf("%v", err)
		}
	}
	a.setup()
	a.loadModules(job.Modules)
	for _, c := range job.Commands {
		a.runCommand(c, job.Env)
	}
	if kmsg != nil {
		kmsg.stop()
	}
	return w.WriteFrame(proto.TypeDone, "", nil)
}

func readJob(path string) (*proto.Job, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read job: %w", err)
	}
	var j proto.Job
	if err := j.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("parse job %s: %w", path, err)
	}
	return &j, nil
}

// openPort opens the result port in raw mode: the tty layer must not turn
// "\n" into "\r\n" or the frame lengths would no longer match.
func openPort(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open result port: %w", err)
	}
	t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("result port %s is not a tty: %w", path, err)
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CRTSCTS
	t.Cflag |= unix.CS8 | unix.CLOCAL
	if err := unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t); err != nil {
		f.Close()
		return nil, fmt.Errorf("set result port raw: %w", err)
	}
	return f, nil
}

type agent struct {
	w *proto.Writer
}

// logf reports a problem both on the console and to the host.
func (a *agent) logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	log.Print(msg)
	_ = a.w.WriteFrame(proto.TypeLog, "", []byte(msg))
}

func (a *agent) hello() {
	var u unix.Utsname
	_ = unix.Uname(&u)
	h := proto.Hello{
		Release: unix.ByteSliceToString(u.Release[:]),
		Version: unix.ByteSliceToString(u.Version[:]),
		Uptime:  uptime(),
	}
	b, _ := h.MarshalBinary()
	_ = a.w.WriteFrame(proto.TypeHello, "", b)
}

func uptime() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

// setup finishes the guest set-up: under u-root's init it mounts what eBPF
// tests expect and u-root's init does not provide.
func (a *agent) setup() {
	if os.Getpid() != 1 {
		for _, m := range rootfs {
			switch m.fstype {
			case "bpf", "tracefs", "debugfs":
				if mounted(m.dst) {
					continue
				}
				if err := mountOnce(m); err != nil {
					a.logf("%v", err)
				}
			}
		}
	}
	// Tests raise RLIMIT_MEMLOCK themselves on old kernels, but unlimited is
	// what a CI guest wants anyway.
	_ = unix.Setrlimit(unix.RLIMIT_MEMLOCK, &unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY})
}

func mounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && f[1] == dir {
			return true
		}
	}
	return false
}

func (a *agent) loadModules(paths []string) {
	for _, p := range paths {
		if err := loadModule(p); err != nil {
			a.logf("load module %s: %v", filepath.Base(p), err)
		}
	}
}

func (a *agent) runCommand(c proto.Command, env []string) {
	artifacts := filepath.Join(proto.ArtifactsRoot, c.ID)
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		a.logf("create artifacts dir: %v", err)
	}
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Dir = c.Dir
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	// The host's working directory may not exist in the image unless it
	// brought testdata along.
	if err := os.MkdirAll(cmd.Dir, 0o755); err != nil {
		a.logf("create working directory %s: %v", cmd.Dir, err)
	}
	_ = a.w.WriteFrame(proto.TypeStart, c.ID, nil)
	cmd.Env = append(os.Environ(), "VMTEST_GUEST=1", "VMTEST_ARTIFACTS="+artifacts, "HOME=/tmp", "TMPDIR=/tmp")
	cmd.Env = append(cmd.Env, env...)
	out := &frameWriter{w: a.w, name: c.ID}
	cmd.Stdout = out
	cmd.Stderr = out
	// A process group of its own, so children a test leaves behind can be
	// killed before the next command.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	start := time.Now()
	err := cmd.Run()
	if cmd.Process != nil {
		_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
	}
	reapOrphans()
	ex := proto.Exit{Code: -1, Duration: time.Since(start)}
	if cmd.ProcessState != nil {
		ex.Code = cmd.ProcessState.ExitCode()
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		ex.Error = err.Error()
	} else if ex.Code == -1 && cmd.ProcessState != nil {
		ex.Error = cmd.ProcessState.String()
	}
	a.sendArtifacts(c.ID, artifacts)
	b, _ := ex.MarshalBinary()
	if err := a.w.WriteFrame(proto.TypeExit, c.ID, b); err != nil {
		log.Printf("report exit of %s: %v", c.ID, err)
	}
}

// reapOrphans collects the exit status of every child that has exited. As
// PID 1 the agent inherits the processes a test left behind; it reaps them
// only between commands, when no child os/exec still waits for exists.
func reapOrphans() {
	if os.Getpid() != 1 {
		return
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

func (a *agent) sendArtifacts(id, dir string) {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(proto.ArtifactsRoot, p)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if len(b) > proto.MaxPayload {
			a.logf("artifact %s: %d bytes is too large, truncated", rel, len(b))
			b = b[:proto.MaxPayload]
		}
		return a.w.WriteFrame(proto.TypeFile, proto.EscapeName(rel), b)
	})
	if err != nil {
		a.logf("send artifacts of %s: %v", id, err)
	}
}

// frameWriter sends a command's output as TypeOutput frames.
type frameWriter struct {
	w    *proto.Writer
	name string
}

func (f *frameWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		n := len(p)
		if n > 32<<10 {
			n = 32 << 10
		}
		if err := f.w.WriteFrame(proto.TypeOutput, f.name, p[:n]); err != nil {
			return 0, err
		}
		p = p[n:]
	}
	return total, nil
}

var _ io.Writer = (*frameWriter)(nil)
