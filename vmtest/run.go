// Package vmtest runs commands, usually Go test binaries, inside a Linux
// kernel under QEMU and brings back their output, exit status, artifacts and
// the guest's kernel log.
//
// The guest is a u-root initramfs (see package images) whose agent reports
// over a serial port reserved for results, so nothing the kernel prints can
// corrupt them. The console is kept as a log and scanned for panics and kernel
// splats; a guest that panics, hangs or stops without reporting fails the run
// with the last console lines, never passes it.
package vmtest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/skbstore/skbstore/images"
	"github.com/skbstore/skbstore/kernels"
	"github.com/skbstore/skbstore/vmtest/internal/proto"
)

// Command is a program to run in the guest.
type Command struct {
	// ID names the command in results and artifact paths: letters, digits,
	// '.', '_' and '-'.
	ID string
	// Binary is the host path of an executable to copy into the guest.
	Binary string
	// GuestPath, instead of Binary, names a program the guest has (a
	// u-root command such as gosh, found on the guest's PATH).
	GuestPath string
	Args      []string
	// Dir is the working directory in the guest ("/" when empty).
	Dir string
	// Outputs are files the command writes that are copied back to the
	// host when it finishes (a coverage profile...).
	Outputs []Output
	// Terminal runs it on the guest's console as its controlling terminal
	// (an interactive shell): what it prints goes to Options.Console and it
	// reads Options.Stdin.
	Terminal bool
	// ShellOnFail, when the command fails, runs this guest program (a
	// shell) on the console in its directory and environment, for the
	// person at Options.Stdin, before the guest powers off.
	ShellOnFail string
}

// Output is a file (or a directory of files) a command writes in the guest
// at Guest, copied to Host when it finishes.
type Output struct {
	Guest, Host string
	Dir         bool
}

// Options configures Run.
type Options struct {
	// Kernel is the host path of the kernel image to boot: an x86 bzImage
	// or an arm64 Image. Its architecture decides the machine QEMU
	// emulates, and command binaries must be built for it.
	Kernel string
	// BaseImage is the base initramfs from images.Base.
	BaseImage string
	// Commands run one after the other in the guest.
	Commands []Command
	// Modules are kernel modules to load before the first command, in load
	// order.
	Modules []Module
	// Files are extra files for the guest's initramfs (small ones: the
	// kernel's config, C libraries). Trees go in Shares.
	Files []images.File
	// Shares are host trees (the test's Go module, -share paths) the guest
	// sees at their own paths, read from a disk as they are opened.
	Shares []Share
	// Trees are read-only trees made into disks once (ModulesDisk: all of
	// the kernel's modules, loaded when the kernel asks for one;
	// GorootDisk).
	Trees []DiskTree
	// Env is added to each command's environment in the guest.
	Env []string

	// OutDir receives console.log, dmesg.log, the output of each command,
	// artifacts/ and result.json. Required.
	OutDir string

	// Accel is "", "auto", "kvm" or "tcg".
	Accel string
	// AccelCache, when set, is a file that keeps the answer of the KVM
	// probe across processes (see ChooseAccel).
	AccelCache string
	// QEMU is the qemu-system binary; "" means $VMTEST_QEMU or the
	// kernel's architecture's (qemu-system-x86_64, qemu-system-aarch64)
	// from $PATH.
	QEMU string
	// CPUModel is QEMU's -cpu under software emulation; "" means the
	// architecture's default (max without ERMS and FSRM on x86-64,
	// neoverse-n1 on arm64: the fastest that runs the suites, README).
	// KVM always uses the host's.
	CPUModel string
	// Firmware is the guest's firmware: "" or FirmwareAuto (qboot on x86
	// when QEMU's data directory has it, else QEMU's default),
	// FirmwareQEMU, or the path of a firmware file (QEMU's -bios).
	Firmware string
	// MemoryMB and CPUs size the guest; 0 means 512 MiB and 1 CPU.
	MemoryMB int
	CPUs     int
	// Timeout bounds the whole run, boot included; 0 means 10 minutes.
	Timeout time.Duration
	// Limits cap what the guest may send back.
	Limits Limits
	// KernelStartTimeout is how long the kernel may take to print its
	// first console line before the boot is given up; 0 means 1 minute.
	KernelStartTimeout time.Duration
	// Append is added to the kernel command line.
	Append string
	// KeepDWARF puts command binaries in the image as they are. By default
	// their DWARF sections are dropped (the symbol table stays): nothing in
	// the guest reads them and they cost unpacking time at every boot.
	KeepDWARF bool
	// KASLR keeps the kernel's address space layout randomization, which
	// vmtest turns off (nokaslr) by default: under software emulation
	// random placement makes some boots 10% slower than others.
	KASLR bool

	// Console, when set, receives a live copy of the guest console.
	Console io.Writer
	// GDB, when set, is a TCP address (host:port) where QEMU's gdb stub
	// listens; the guest's CPUs wait for the debugger before the first
	// instruction, and the kernel-start timeout does not apply.
	GDB string
	// Stdin, when set, is typed into the guest console (vmtest shell: the
	// user's terminal, which QEMU puts in raw mode).
	Stdin io.Reader
	// Output, when set, receives a live copy of command output.
	Output io.Writer
	// Progress receives one line per step; nil discards.
	Progress io.Writer
	// Started, when set, is called once QEMU runs: from then on its gdb
	// stub (GDB) takes connections.
	Started func()

	mach  machine  // of the kernel's architecture; set by Run and Floor
	bios  string   // the firmware file, "" for QEMU's default; set with mach
	serve *Session // the session this boot serves (StartSession)
}

// Module is a kernel module file to put in the image and load.
type Module struct {
	Name string
	// Host is the module file on the host; it may be compressed, and is
	// then decompressed into the image (faster than in an emulated guest).
	Host string
	// Guest is where it goes in the guest's initramfs,
	// without the compression suffix of Host.
	Guest string
}

// Failure kinds of a guest that did not finish normally.
const (
	FailPanic     = "kernel panic"
	FailTimeout   = "timeout"
	FailCancelled = "cancelled"
	FailNoReport  = "no report"
	FailQEMU      = "qemu"
	// FailNoKernel is a kernel that never printed a line: not a kernel,
	// or one that does not boot on this machine.
	FailNoKernel = "kernel did not start"
)

// Failure describes a run whose guest did not finish normally.
type Failure struct {
	Kind    string
	Message string
	// Console holds the last console lines before the failure.
	Console []string
}

func (f *Failure) Error() string { return f.Kind + ": " + f.Message }

// CommandResult is what one command produced.
type CommandResult struct {
	ID string
	// Exit is nil when the guest never reported the command finished.
	Exit *proto.Exit
	// OutputBytes is the size of the command's stdout and stderr, which are
	// in OutDir/<ID>.out (see Result.ReadOutput).
	OutputBytes int64
	// FailLine is the first line of the output in which Go's testing
	// package reports a failure ("--- FAIL: TestX", "FAIL"): a binary that
	// printed one has failed, whatever exit status arrives.
	FailLine string `json:",omitempty"`
}

// Result is the outcome of one boot.
type Result struct {
	Accel AccelChoice
	// Release is the guest's `uname -r`, empty if the agent never started.
	Release string
	// AgentUptime is the guest's uptime when the agent started.
	AgentUptime float64
	// Boot is the time from QEMU start to the agent's first report.
	Boot time.Duration
	// FirstOutput is the time from QEMU start to the first output of a
	// command (for a Go test, its first event).
	FirstOutput time.Duration
	// Duration is the guest's time: QEMU's start to its exit; for a
	// Session's command, its run (and the boot, for the first command).
	Duration time.Duration
	// Kernel has points of the guest kernel's clock read from the console.
	Kernel KernelTimes
	// QEMUMaxRSS is the peak resident memory of the QEMU process, in bytes.
	QEMUMaxRSS int64
	Commands   []CommandResult
	// Log holds the agent's own messages, for information.
	Log []string
	// Faults are problems that fail the run although the guest finished:
	// a module that did not load, a cap on what the guest may send reached.
	Faults []string `json:",omitempty"`
	Splats []Splat
	// Failure is set when the guest did not finish normally.
	Failure *Failure
	// ProtocolErrors lists damage seen on the result port and frames that
	// did not fit the job: any fails the run, since results that came
	// with them cannot be trusted.
	ProtocolErrors []string `json:",omitempty"`
	// Files are the artifacts received, relative to OutDir/artifacts.
	Files  []string
	OutDir string
}

// Err returns nil only when the guest finished normally, no splat, fault or
// protocol error was seen and every command exited 0 without reporting a
// failed test. Otherwise it says what went wrong.
func (r *Result) Err() error {
	var msgs []string
	if r.Failure != nil {
		msgs = append(msgs, r.Failure.Error())
	}
	for _, s := range r.Splats {
		msgs = append(msgs, fmt.Sprintf("kernel %s: %s", s.Kind, s.Line))
	}
	msgs = append(msgs, r.Faults...)
	if len(r.ProtocolErrors) > 0 {
		msg := "result port: " + r.ProtocolErrors[0]
		if n := len(r.ProtocolErrors) - 1; n > 0 {
			msg += fmt.Sprintf(" (and %d more, in result.json)", n)
		}
		msgs = append(msgs, msg)
	}
	for _, c := range r.Commands {
		switch {
		case c.Exit == nil:
			if r.Failure == nil {
				msgs = append(msgs, fmt.Sprintf("%s: never reported", c.ID))
			}
		case c.Exit.Error != "":
			msgs = append(msgs, fmt.Sprintf("%s: %s", c.ID, c.Exit.Error))
		case c.Exit.Code != 0:
			msgs = append(msgs, fmt.Sprintf("%s: exit status %d", c.ID, c.Exit.Code))
		case c.FailLine != "":
			msgs = append(msgs, fmt.Sprintf("%s: exit status 0, but its output reports a failure: %q", c.ID, c.FailLine))
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New(strings.Join(msgs, "; "))
}

// ReadOutput returns what command id printed, from OutDir.
func (r *Result) ReadOutput(id string) ([]byte, error) {
	if !validID(id) {
		return nil, fmt.Errorf("vmtest: bad command ID %q", id)
	}
	return os.ReadFile(filepath.Join(r.OutDir, id+outputFileSuffix))
}

const guestBinDir = "/vmtest/bin"

// Run boots the kernel with the commands and waits for the guest to finish,
// fail or time out. The returned error is for problems on the host (no QEMU,
// an unreadable file); what happened in the guest is in the Result, which is
// also written to OutDir/result.json.
func Run(ctx context.Context, opts Options) (*Result, error) {
	qemu, err := opts.prepare()
	if err != nil {
		return nil, err
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}

	key, err := newKey()
	if err != nil {
		return nil, err
	}
	drives, mounts, err := opts.disks(ctx, opts.OutDir)
	if err != nil {
		return nil, err
	}
	for _, d := range drives {
		if !d.readOnly {
			defer os.Remove(d.path)
		}
	}
	initrd := filepath.Join(opts.OutDir, "initramfs.cpio")
	if err := writeImage(initrd, opts, key, mounts); err != nil {
		return nil, err
	}
	defer os.Remove(initrd)

	accel, err := ChooseAccel(ctx, qemu, opts.Kernel, opts.Accel, opts.AccelCache)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "accelerator: %s\n", accel)

	res := &Result{Accel: accel, OutDir: opts.OutDir}
	for _, c := range opts.Commands {
		res.Commands = append(res.Commands, CommandResult{ID: c.ID})
	}
	err = boot(ctx, qemu, initrd, drives, accel, opts, key, res)
	if werr := writeResult(res); werr != nil && err == nil {
		err = werr
	}
	return res, err
}

// prepare checks opts, sets its machine and default timeout, makes OutDir
// and returns the QEMU binary to run.
func (opts *Options) prepare() (qemu string, err error) {
	if opts.OutDir == "" {
		return "", errors.New("vmtest: no output directory")
	}
	if opts.Kernel == "" {
		return "", errors.New("vmtest: no kernel")
	}
	if err := opts.check(); err != nil {
		return "", err
	}
	if opts.mach, err = kernelMachine(opts.Kernel); err != nil {
		return "", err
	}
	if err := opts.checkBinaries(); err != nil {
		return "", err
	}
	if err := os.MkdirAll(opts.OutDir, 0o755); err != nil {
		return "", fmt.Errorf("vmtest: %w", err)
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Minute
	}
	return opts.machineQEMU()
}

// machineQEMU finds the QEMU binary for opts.mach and sets the firmware it
// boots.
func (opts *Options) machineQEMU() (string, error) {
	qemu, err := findQEMU(opts.QEMU, opts.mach)
	if err != nil {
		return "", err
	}
	opts.bios, err = opts.mach.firmwarePath(opts.Firmware, qemu)
	return qemu, err
}

// findQEMU finds the qemu-system binary for the machine. $VMTEST_QEMU
// names one for x86-64 guests, $VMTEST_QEMU_ARM64 for arm64 guests (one
// run may boot both).
func findQEMU(q string, m machine) (string, error) {
	env := "VMTEST_QEMU"
	if m.arch != "amd64" {
		env += "_" + strings.ToUpper(m.arch)
	}
	if q == "" {
		q = os.Getenv(env)
	}
	if q == "" {
		q = m.qemu
	}
	p, err := exec.LookPath(q)
	if err != nil {
		return "", fmt.Errorf("vmtest: %s not found, needed for %s guests: install it (Debian/Ubuntu: apt-get install %s) or set %s",
			q, m.arch, m.qemuPackage, env)
	}
	return p, nil
}

// kernelMachine checks that a kernel image is whole and returns the machine
// of its architecture.
func kernelMachine(kernel string) (machine, error) {
	if err := kernels.CheckImage(kernel); err != nil {
		return machine{}, fmt.Errorf("vmtest: %w", err)
	}
	arch, err := kernels.ImageArch(kernel)
	if err != nil {
		return machine{}, fmt.Errorf("vmtest: %w", err)
	}
	return machineFor(arch)
}

// check refuses options no guest can run with.
func (o *Options) check() error {
	var errs []error
	if o.MemoryMB < 0 || o.MemoryMB > 0 && o.MemoryMB < 128 {
		errs = append(errs, fmt.Errorf("memory of %d MiB: give at least 128", o.MemoryMB))
	}
	if o.CPUs < 0 || o.CPUs > 255 {
		errs = append(errs, fmt.Errorf("%d CPUs: give 1 to 255", o.CPUs))
	}
	if o.Timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout %s: give a positive duration", o.Timeout))
	}
	if o.Limits.OutputBytes < 0 || o.Limits.ArtifactBytes < 0 || o.Limits.ArtifactFiles < 0 {
		errs = append(errs, errors.New("negative limit"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	return nil
}

func writeImage(dst string, opts Options, key []byte, disks []proto.Disk) error {
	job := proto.Job{Env: opts.Env, Key: key, Limits: opts.Limits.withDefaults().proto(), Disks: disks,
		ResultPort: opts.mach.resultPort, Console: opts.mach.consoleDevice(), ExitPort: opts.mach.exitPort,
		Serve: opts.serve != nil}
	var files []images.File
	for _, c := range opts.Commands {
		if !validID(c.ID) {
			return fmt.Errorf("vmtest: command ID %q: use letters, digits, '.', '_' and '-', not only dots (vmtest.CommandID makes one)", c.ID)
		}
		guest := c.GuestPath
		if guest == "" {
			guest = guestBinDir + "/" + c.ID
			files = append(files, images.File{Guest: guest, Host: c.Binary, Mode: 0o755, StripDWARF: !opts.KeepDWARF})
		}
		pc := proto.Command{ID: c.ID, Path: guest, Args: c.Args, Dir: c.Dir, Terminal: c.Terminal, ShellOnFail: c.ShellOnFail}
		for _, o := range c.Outputs {
			pc.Outputs = append(pc.Outputs, proto.Output{Path: o.Guest, Dir: o.Dir})
		}
		job.Commands = append(job.Commands, pc)
	}
	for _, m := range opts.Modules {
		data, err := kernels.ReadModule(m.Host)
		if err != nil {
			return fmt.Errorf("vmtest: module %s: %w", m.Name, err)
		}
		guest := trimCompression(m.Guest)
		files = append(files, images.File{Guest: guest, Data: data})
		job.Modules = append(job.Modules, guest)
	}
	files = append(files, opts.Files...)
	b, err := job.MarshalBinary()
	if err != nil {
		return fmt.Errorf("vmtest: %w", err)
	}
	files = append(files, images.File{Guest: proto.JobPath, Data: b})
	if opts.BaseImage == "" {
		return errors.New("vmtest: no base image")
	}
	return images.Write(dst, opts.BaseImage, files)
}

// trimCompression drops the compression suffix of a module file name.
func trimCompression(name string) string {
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(name, ".ko"+ext) {
			return strings.TrimSuffix(name, ext)
		}
	}
	return name
}

func validID(id string) bool {
	return id != "" && strings.Trim(id, ".") != "" && strings.IndexFunc(id, func(r rune) bool { return !idRune(r) }) < 0
}

// idRune reports whether r may stand in a command ID.
func idRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
}

// CommandID makes a valid Command.ID of name: what an ID cannot hold becomes
// '_' (Go allows package directories such as "a+b" or "ünï"), and a name of
// dots alone or nothing becomes "test".
func CommandID(name string) string {
	id := strings.Map(func(r rune) rune {
		if idRune(r) {
			return r
		}
		return '_'
	}, name)
	if strings.Trim(id, ".") == "" {
		return "test"
	}
	return id
}

func qemuArgs(opts Options, accel AccelChoice, initrd string, drives []drive, resultFD int) []string {
	mem, cpus := opts.MemoryMB, opts.CPUs
	if mem == 0 {
		mem = 512
	}
	if cpus == 0 {
		cpus = 1
	}
	m := opts.mach
	cmdline := []string{
		"console=" + m.console + ",115200",
		"panic=-1",            // reboot at once on panic; -no-reboot turns that into QEMU exiting
		"random.trust_cpu=on", // do not wait for entropy: old kernels block getrandom until then
		"UROOT_NOHWRNG=1",     // u-root's init need not look for a hardware RNG
		"printk.devkmsg=on",
	}
	if !opts.KASLR {
		// Under software emulation the kernel's random placement makes
		// some boots ~10% slower than others, all the way through: fixed
		// placement makes runs faster and their times comparable.
		cmdline = append(cmdline, "nokaslr")
	}
	if opts.Append != "" {
		cmdline = append(cmdline, opts.Append)
	}
	if m.earlycon != "" {
		cmdline = append(cmdline, m.earlycon)
	}
	args := []string{"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"}
	args = append(args, m.boardArgs(accel.Name)...)
	args = append(args, "-m", fmt.Sprint(mem), "-smp", fmt.Sprint(cpus))
	if opts.CPUModel != "" {
		m.tcgCPU = opts.CPUModel
	}
	args = append(args, accel.qemuArgs(m)...)
	if opts.bios != "" {
		args = append(args, "-bios", opts.bios)
	}
	args = append(args,
		"-kernel", opts.Kernel, "-initrd", initrd, "-append", strings.Join(cmdline, " "),
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
	)
	if resultFD >= 0 {
		args = append(args, "-chardev", fmt.Sprintf("socket,id=res,fd=%d", resultFD))
	} else {
		args = append(args, "-chardev", "null,id=res")
	}
	args = append(args, m.resultArgs...)
	args = append(args, m.exitArgs()...)
	for i, d := range drives {
		args = append(args, d.qemuArgs(i)...)
	}
	if opts.GDB != "" {
		args = append(args, "-gdb", "tcp:"+opts.GDB, "-S")
	}
	return args
}

func boot(ctx context.Context, qemu, initrd string, drives []drive, accel AccelChoice, opts Options, key []byte, res *Result) error {
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()

	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("vmtest: result port: %w", err)
	}
	hostEnd := os.NewFile(uintptr(fds[0]), "result-port")
	guestEnd := os.NewFile(uintptr(fds[1]), "result-port-qemu")
	defer hostEnd.Close()
	hostConn, err := net.FileConn(hostEnd)
	if err != nil {
		guestEnd.Close()
		return fmt.Errorf("vmtest: result port: %w", err)
	}
	defer hostConn.Close()

	consoleLog, err := os.Create(filepath.Join(opts.OutDir, "console.log"))
	if err != nil {
		guestEnd.Close()
		return fmt.Errorf("vmtest: %w", err)
	}
	defer consoleLog.Close()

	// QEMU gets the guest end as fd 3 (the first of ExtraFiles).
	cmd := exec.Command(qemu, qemuArgs(opts, accel, initrd, drives, 3)...)
	cmd.ExtraFiles = []*os.File{guestEnd}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if opts.Stdin != nil {
		// QEMU reads the terminal: it must stay in the foreground
		// process group, or the kernel stops it (SIGTTIN).
		cmd.Stdin = opts.Stdin
		cmd.SysProcAttr.Setpgid = false
	}
	// A pipe of our own rather than StdoutPipe: Wait runs while the console
	// is still being read, and must not close it before the last lines (a
	// panic's) are in.
	stdout, stdoutW, err := os.Pipe()
	if err != nil {
		guestEnd.Close()
		return fmt.Errorf("vmtest: %w", err)
	}
	defer stdout.Close()
	cmd.Stdout = stdoutW
	var stderr strings.Builder
	cmd.Stderr = &cappedWriter{w: &stderr, n: 64 << 10}

	splats := &splatScanner{}
	con := newConsole(40)
	con.lines = splats.line
	limits := opts.Limits.withDefaults()
	var conOut io.Writer = &cappedWriter{w: consoleLog, n: limits.OutputBytes,
		note: fmt.Sprintf("\n[vmtest: console log cut at %d bytes (%s)]\n", limits.OutputBytes, FlagMaxOutput)}
	if opts.Console != nil {
		conOut = io.MultiWriter(conOut, opts.Console)
	}
	start := time.Now()
	con.start = start
	err = cmd.Start()
	guestEnd.Close()
	stdoutW.Close()
	if err != nil {
		return fmt.Errorf("vmtest: start %s: %w", qemu, err)
	}
	if opts.Started != nil {
		opts.Started()
	}

	consoleDone := make(chan struct{})
	go func() {
		con.copy(stdout, conOut)
		close(consoleDone)
	}()
	rr := newResultReader(res, opts, key, splats, start)
	if opts.serve != nil {
		opts.serve.attach(rr, hostConn, splats)
	}
	resultsDone := make(chan struct{})
	go func() {
		rr.read(hostConn)
		close(resultsDone)
	}()

	waitDone := make(chan error, 1)
	go func() { waitDone <- cmd.Wait() }()

	// A kernel that prints nothing at all is not booting (a corrupt image
	// can halt the CPU before the first line): do not wait for the whole
	// timeout to say so.
	startWait := opts.KernelStartTimeout
	if startWait == 0 {
		startWait = time.Minute
	}
	if opts.GDB != "" {
		startWait = opts.Timeout // the CPUs wait for a person with a debugger
	}
	startTimer := time.NewTimer(startWait)
	defer startTimer.Stop()
	var waitErr error
	timedOut, silent := false, false
wait:
	for {
		select {
		case waitErr = <-waitDone:
			break wait
		case <-startTimer.C:
			if con.kernelPrinted() {
				continue
			}
			silent = true
		case <-ctx.Done():
			timedOut = true
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		waitErr = <-waitDone
		break
	}
	// QEMU is gone: its end of the result port is closed, so the reader sees
	// EOF once it has drained what the guest sent.
	<-consoleDone
	select {
	case <-resultsDone:
	case <-time.After(5 * time.Second):
		hostConn.Close()
		<-resultsDone
	}
	res.Duration = time.Since(start)
	rr.finish()
	res.Kernel = con.kernelTimes()
	if ps := cmd.ProcessState; ps != nil {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			res.QEMUMaxRSS = ru.Maxrss * 1024
		}
	}

	res.Splats = splats.result()

	tail := con.tail()
	switch {
	case con.panicLine() != "":
		res.Failure = &Failure{Kind: FailPanic, Message: con.panicLine(), Console: tail}
	case silent:
		res.Failure = &Failure{Kind: FailNoKernel, Console: tail, Message: fmt.Sprintf(
			"the kernel printed nothing within %s of QEMU's start: is %s %s that boots with %s?", startWait, opts.Kernel, opts.mach.kernelKind, accel)}
	case timedOut && ctx.Err() == context.DeadlineExceeded:
		res.Failure = &Failure{Kind: FailTimeout, Message: fmt.Sprintf("guest did not finish within %s (hung?)%s", opts.Timeout, rr.stage()), Console: tail}
	case timedOut:
		res.Failure = &Failure{Kind: FailCancelled, Message: "run stopped before the guest finished" + rr.stage(), Console: tail}
	case !rr.done && waitErr != nil && firstLine(stderr.String()) != "":
		res.Failure = &Failure{Kind: FailQEMU, Message: fmt.Sprintf("%v: %s", waitErr, firstLine(stderr.String())), Console: tail}
	case !rr.done && !rr.hello && !con.kernelPrinted():
		res.Failure = &Failure{Kind: FailNoKernel, Console: tail, Message: fmt.Sprintf(
			"the kernel never printed a line: QEMU exited before it started (a CPU fault while booting resets the "+
				"machine, and vmtest runs QEMU with -no-reboot): is %s %s that boots with %s?", opts.Kernel, opts.mach.kernelKind, accel)}
	case !rr.done:
		msg := "guest stopped without reporting" + rr.stage()
		if waitErr != nil {
			msg += fmt.Sprintf(" (qemu: %v)", waitErr)
		}
		res.Failure = &Failure{Kind: FailNoReport, Message: msg, Console: tail}
	}
	return nil
}

// newKey returns a fresh random key for one boot's result port. (The
// guest only checks frames with it: generating keys stays out of the agent,
// whose start-up pays for every package it links.)
func newKey() ([]byte, error) {
	k := make([]byte, proto.KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("make result port key: %w", err)
	}
	return k, nil
}

// FloorResult is the outcome of a Floor boot.
type FloorResult struct {
	Accel AccelChoice
	// Duration is the time from QEMU's start to its exit.
	Duration time.Duration
	Kernel   KernelTimes
	// Console is what the guest printed (the first MiB).
	Console string
}

// Floor boots kernel with an initramfs that is used as it is, typically a
// trivial /init that prints "floorinit: reached /init" and powers off at
// once. It uses the same machine and accelerator as Run, so the two can be
// compared: the difference is what vmtest itself costs. When the guest does
// not get there, the error comes with a FloorResult holding its console.
func Floor(ctx context.Context, opts Options, initramfs string) (*FloorResult, error) {
	var err error
	if opts.mach, err = kernelMachine(opts.Kernel); err != nil {
		return nil, err
	}
	qemu, err := opts.machineQEMU()
	if err != nil {
		return nil, err
	}
	res := &FloorResult{}
	res.Accel, err = ChooseAccel(ctx, qemu, opts.Kernel, opts.Accel, opts.AccelCache)
	if err != nil {
		return nil, err
	}
	if opts.Timeout == 0 {
		opts.Timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	// The floor has no result port: an unconnected chardev keeps the
	// machine identical to Run's.
	args := qemuArgs(opts, res.Accel, initramfs, nil, -1)
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// The console is read as it comes, so that its lines are timed.
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var out strings.Builder
	con := newConsole(1)
	start := time.Now()
	con.start = start
	copied := make(chan struct{})
	go func() {
		con.copy(pr, &cappedWriter{w: &out, n: 1 << 20})
		close(copied)
	}()
	err = cmd.Run()
	res.Duration = time.Since(start)
	pw.Close()
	<-copied
	res.Console = out.String()
	res.Kernel = con.kernelTimes()
	why := lastLines(res.Console, 5)
	if p := con.panicLine(); p != "" {
		why = p
	}
	if err != nil {
		return res, fmt.Errorf("floor boot: %w: %s", err, why)
	}
	if !strings.Contains(res.Console, "floorinit: reached /init") {
		return res, fmt.Errorf("floor boot never reached /init: %s", why)
	}
	return res, nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

// cappedWriter writes the first n bytes to w, then note once, then nothing.
type cappedWriter struct {
	w    io.Writer
	n    int64
	note string
	cut  bool
}

func (c *cappedWriter) Write(p []byte) (int, error) {
	if c.n <= 0 {
		if !c.cut {
			c.cut = true
			_, _ = io.WriteString(c.w, c.note)
		}
		return len(p), nil
	}
	q := p
	if int64(len(q)) > c.n {
		q = q[:c.n]
	}
	c.n -= int64(len(q))
	if _, err := c.w.Write(q); err != nil {
		return 0, err
	}
	if len(q) < len(p) {
		return c.Write(p[len(q):])
	}
	return len(p), nil
}

func writeResult(res *Result) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(res.OutDir, "result.json"), b, 0o644)
}
