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
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/vmtest/internal/ioport"
	"github.com/skbstore/skbstore/vmtest/internal/proto"
)

// Main runs the agent and never returns: the VM is powered off at the end,
// whatever happened, so the host sees the guest exit rather than a hang.
func Main() {
	if filepath.Base(os.Args[0]) == "modprobe" {
		// The kernel's request_module, or a test, runs the agent as
		// modprobe (serveModprobe).
		os.Exit(Modprobe(os.Args[1:], os.Stderr))
	}
	log.SetPrefix("vmtest-guest: ")
	log.SetFlags(0)
	var rootfs *rootfsSetup
	if os.Getpid() == 1 {
		r := initRootfs()
		rootfs = &r
		timeline("agent started")
	}
	exitPort, err := run(rootfs)
	if err != nil {
		log.Printf("%v", err)
	}
	unix.Sync()
	if os.Getpid() != 1 && os.Getenv("VMTEST_GUEST_NO_POWEROFF") != "" {
		os.Exit(boolToCode(err != nil))
	}
	if exitPort != 0 && err == nil {
		fastExit(exitPort)
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

// run does the job. rootfs, when the agent is PID 1, is the file system
// set-up that runs meanwhile.
// It returns the job's exit port once everything is sent.
func run(rootfs *rootfsSetup) (int64, error) {
	job, err := readJob(proto.JobPath)
	if err != nil {
		return 0, err
	}
	if len(job.Key) == 0 {
		return 0, errors.New("the job has no result port key")
	}
	port := job.ResultPort
	if port == "" {
		port = "/dev/ttyS1"
	}
	f, err := openPort(port)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	a := &agent{w: proto.NewWriter(f, job.Key), limits: job.Limits, console: job.Console}
	timeline("result port open")
	// NVMe namespaces appear some tens of milliseconds into user space, and
	// mounting waits for the disk: under emulation the guest's one host
	// thread does the rest of the set-up meanwhile.
	var mounted <-chan struct{}
	if rootfs != nil {
		mounted = rootfs.mounted
	} else {
		c := make(chan struct{}) // under u-root's init, mounted already
		close(c)
		mounted = c
	}
	disks := make(chan struct{})
	go func() {
		defer close(disks)
		a.mountDisks(job.Disks, mounted)
	}()
	a.hello()
	kmsg, err := startKmsg(a.sendDmesg)
	if err != nil {
		a.logf("%v", err)
	}
	if rootfs != nil {
		for _, err := range <-rootfs.done {
			a.logf("%v", err)
		}
	}
	timeline("file systems mounted, lo up")
	a.setup()
	timeline("set up")
	a.loadModules(job.Modules)
	timeline("modules loaded")
	<-disks
	timeline("disks mounted")
	for _, c := range job.Commands {
		timeline("run " + c.ID)
		a.runCommand(c, job.Env)
		timeline("ran " + c.ID)
	}
	if job.Serve {
		if err := a.serve(f, job); err != nil {
			a.faultf("%v", err)
		}
	}
	if kmsg != nil {
		kmsg.stop()
	}
	if err := a.w.WriteFrame(proto.TypeDone, "", nil); err != nil {
		return 0, err
	}
	// Everything must have left the UART before QEMU may exit: wait until
	// the port's transmitter is empty (tcdrain).
	if err := unix.IoctlSetInt(int(f.Fd()), unix.TCSBRK, 1); err != nil {
		return 0, fmt.Errorf("drain the result port: %w", err)
	}
	return job.ExitPort, nil
}

// fastExit makes QEMU exit through its isa-debug-exit device at port, after
// a line on the console that marks the power-off on the kernel's clock (at
// the kernel's own "Power down" level: u-root's init quiets the console). If
// there is no such device the write does nothing and the caller powers off
// as usual.
func fastExit(port int64) {
	writeKmsg("<0>", proto.PowerOffLine)
	if err := ioport.Write(uint16(port), proto.ExitValue); err != nil {
		log.Printf("fast exit: %v", err)
	}
}

// readJob reads the job and removes it: it holds the key that authenticates
// the agent's frames, which the commands must not see.
func readJob(path string) (*proto.Job, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read job: %w", err)
	}
	if err := os.Remove(path); err != nil {
		return nil, fmt.Errorf("remove job: %w", err)
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
	// Keep the port to the agent: no other open (root can still make a
	// node and force it, which is why frames are authenticated too), and no
	// device node for a test that looks for serial ports to find.
	if err := unix.IoctlSetInt(int(f.Fd()), unix.TIOCEXCL, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("result port %s: exclusive mode: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		f.Close()
		return nil, fmt.Errorf("hide result port: %w", err)
	}
	return f, nil
}

type agent struct {
	w       *proto.Writer
	limits  proto.Limits
	console string // the console device, for interactive commands

	output     atomic.Int64 // bytes of command output and kernel log sent
	outputOver atomic.Bool  // the output cap was reached and reported
	artBytes   int64
	artFiles   int
	filesOver  bool // the cap on files was reached and reported
	serving    bool // commands come from the host one at a time (serve)
}

// timeline puts a step of the agent in the kernel log at debug level (off
// the console, in the host's dmesg.log), stamped by the kernel's clock, so
// that where a boot's user-space time goes can be read there.
func timeline(step string) {
	writeKmsg("<7>", "vmtest-guest: timeline: "+step)
}

// logf reports something worth knowing both on the console and to the host.
func (a *agent) logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	log.Print(msg)
	_ = a.w.WriteFrame(proto.TypeLog, "", []byte(truncate(msg, 4096)))
}

// faultf reports a problem that fails the run, on the console and to the host.
func (a *agent) faultf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	log.Print(msg)
	_ = a.w.WriteFrame(proto.TypeFault, "", []byte(truncate(msg, 4096)))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// spendOutput takes n bytes from the output cap. Past the cap it reports the
// fault once and refuses: the host would refuse the bytes anyway.
func (a *agent) spendOutput(n int) bool {
	if a.limits.Output <= 0 {
		return true
	}
	if a.output.Add(int64(n)) <= a.limits.Output {
		return true
	}
	if !a.outputOver.Swap(true) {
		a.faultf("output and kernel log over the cap of %d bytes per boot (-max-output): the rest is dropped", a.limits.Output)
	}
	return false
}

func (a *agent) sendDmesg(b []byte) {
	if a.spendOutput(len(b)) {
		_ = a.w.WriteFrame(proto.TypeDmesg, "", b)
	}
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

// loadModules loads the job's modules. One that does not load fails the run:
// the tests that need it would otherwise skip, or fail for a reason far from
// the cause.
func (a *agent) loadModules(paths []string) {
	for _, p := range paths {
		if err := loadModule(p); err != nil {
			a.faultf("load module %s: %v", filepath.Base(p), err)
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
	for _, o := range c.Outputs {
		dir := o.Path
		if !o.Dir {
			dir = filepath.Dir(o.Path)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			a.logf("create directory for output %s: %v", o.Path, err)
		}
	}
	_ = a.w.WriteFrame(proto.TypeStart, c.ID, nil)
	cmd.Env = append(os.Environ(), "VMTEST_GUEST=1", "VMTEST_ARTIFACTS="+artifacts, "HOME=/tmp", "TMPDIR=/tmp")
	cmd.Env = append(cmd.Env, env...)
	out := &frameWriter{w: a.w, name: c.ID, spend: a.spendOutput}
	cmd.Stdout = out
	cmd.Stderr = out
	// A process group of its own, so children a test leaves behind can be
	// killed before the next command.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if c.Terminal {
		tty, err := onTerminal(a.console, cmd)
		if err != nil {
			a.faultf("terminal for %s: %v", c.ID, err)
		} else {
			defer tty.Close()
		}
	}

	start := time.Now()
	err := cmd.Run()
	if cmd.Process != nil {
		_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		reapGroup(cmd.Process.Pid)
	}
	reapOrphans()
	if a.serving {
		timeline("exited " + c.ID)
		killStrays()
		timeline("strays killed")
	}
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
	if c.ShellOnFail != "" && ex.Code != 0 {
		a.shellOnFail(c, cmd.Env, ex)
	}
	a.sendArtifacts(c.ID, artifacts)
	a.sendOutputs(c.Outputs, start)
	if a.serving {
		// The next command of that ID (a re-run) starts with none.
		_ = os.RemoveAll(artifacts)
	}
	b, _ := ex.MarshalBinary()
	if err := a.w.WriteFrame(proto.TypeExit, c.ID, b); err != nil {
		log.Printf("report exit of %s: %v", c.ID, err)
	}
}

// shellOnFail gives the person at the console a shell where the failed
// command ran, with its environment, and returns when they leave it.
func (a *agent) shellOnFail(c proto.Command, env []string, ex proto.Exit) {
	sh := exec.Command(c.ShellOnFail)
	sh.Dir, sh.Env = c.Dir, env
	tty, err := onTerminal(a.console, sh)
	if err != nil {
		a.faultf("shell after %s failed: %v", c.ID, err)
		return
	}
	defer tty.Close()
	fmt.Fprintf(tty, "\r\nvmtest: %s failed (exit status %d); a shell in %s with its environment. Leave it (exit) to power off.\r\n", c.ID, ex.Code, c.Dir)
	if err := sh.Run(); err != nil {
		a.logf("shell after %s: %v", c.ID, err)
	}
	reapOrphans()
}

// reapOrphans collects the exit status of every child that has exited. As
// PID 1 the agent inherits the processes a test left behind; it reaps them
// only between commands, when no child os/exec still waits for exists.
// reapGroup waits, as PID 1, for the processes of the command's group just
// killed: orphans of the command are the agent's children, and a SIGKILL
// takes a moment to end them, so a reap right after the kill (WNOHANG) can
// miss them and leave zombies for the next command to see. A member stuck
// in the kernel is given up after two seconds.
func reapGroup(pgid int) {
	if os.Getpid() != 1 {
		return
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-pgid, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.ECHILD):
			return // none left
		case err == nil && pid > 0:
			continue
		case time.Now().After(deadline):
			return
		}
		time.Sleep(time.Millisecond)
	}
}

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

// artifactPiece is the most of an artifact one frame carries.
const artifactPiece = 256 << 10

// sendArtifacts streams the regular files under dir to the host, in pieces,
// within the job's caps: a file that does not fit is reported as a fault and
// not sent, so a test that leaves a huge (or sparse) file costs neither the
// agent's memory nor the port's time.
func (a *agent) sendArtifacts(id, dir string) {
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(proto.ArtifactsRoot, p)
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			a.logf("artifact %s: not a regular file (%s), not sent", rel, d.Type())
			return nil
		}
		return a.sendFile(proto.TypeFile, proto.EscapeName(rel), p)
	})
	if errors.Is(err, errFilesCap) {
		return
	}
	if err != nil {
		a.faultf("send artifacts of %s: %v", id, err)
	}
}

// sendOutputs sends the files the command wrote for the host. One that is
// not there is not sent: the host then has none either, as go test would.
func (a *agent) sendOutputs(outputs []proto.Output, since time.Time) {
	for i, o := range outputs {
		if !o.Dir {
			if st, err := os.Stat(o.Path); err == nil && st.Mode().IsRegular() {
				if err := a.sendFile(proto.TypeOutFile, strconv.Itoa(i), o.Path); err != nil && !errors.Is(err, errFilesCap) {
					a.faultf("send output %s: %v", o.Path, err)
				}
			}
			continue
		}
		// Of a directory, what the command wrote: a fuzz corpus in the
		// module's testdata holds the inputs from the host too.
		err := filepath.WalkDir(o.Path, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			if info, err := d.Info(); err != nil || info.ModTime().Before(since) {
				return err
			}
			rel, err := filepath.Rel(o.Path, p)
			if err != nil {
				return err
			}
			return a.sendFile(proto.TypeOutFile, strconv.Itoa(i)+"/"+proto.EscapeName(rel), p)
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, errFilesCap) {
			a.faultf("send output %s: %v", o.Path, err)
		}
	}
}

// errFilesCap stops sending files: the cap on their number was reached
// (and reported).
var errFilesCap = errors.New("file cap reached")

// sendFile streams the file at path in frames of type typ (then
// TypeFileMore) named name, within the caps on artifacts.
func (a *agent) sendFile(typ, name, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	if a.limits.ArtifactBytes > 0 && a.artBytes+size > a.limits.ArtifactBytes {
		a.faultf("artifact %s: %d bytes would go over the cap of %d bytes of artifacts per boot (-max-artifacts), not sent", path, size, a.limits.ArtifactBytes)
		return nil
	}
	if a.limits.ArtifactFiles > 0 && a.artFiles >= a.limits.ArtifactFiles {
		if !a.filesOver {
			a.filesOver = true
			a.faultf("files over the cap of %d per boot (-max-artifact-files): %s and the rest not sent", a.limits.ArtifactFiles, path)
		}
		return errFilesCap
	}
	a.artFiles++
	a.artBytes += size
	buf := make([]byte, min(size, artifactPiece))
	// What the file held when it was measured: one that grows meanwhile
	// cannot go past its share of the cap.
	r := io.LimitReader(f, size)
	for first := true; ; first = false {
		n, err := io.ReadFull(r, buf)
		if n > 0 || first {
			if werr := a.w.WriteFrame(typ, name, buf[:n]); werr != nil {
				return werr
			}
			typ = proto.TypeFileMore
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// frameWriter sends a command's output as TypeOutput frames.
type frameWriter struct {
	w     *proto.Writer
	name  string
	spend func(int) bool // takes from the output cap; nil for none
}

func (f *frameWriter) Write(p []byte) (int, error) {
	total := len(p)
	if f.spend != nil && !f.spend(len(p)) {
		return total, nil // over the cap: dropped, and reported once
	}
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
