package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/images"
	"github.com/skbstore/skbstore/kernels"
	"github.com/skbstore/skbstore/vmtest"
	"github.com/skbstore/skbstore/vmtest/internal/slots"
)

// defaultTimeout bounds one boot unless -timeout says otherwise.
const defaultTimeout = 10 * time.Minute

// forAPerson lifts the limit of a boot to a day unless -timeout was given: a
// person is at the guest's shell or debugger.
func (f *vmFlags) forAPerson() {
	if !f.timeoutSet {
		f.timeout = 24 * time.Hour
	}
}

// durationFlag is a duration flag that records whether it was given.
type durationFlag struct {
	d   *time.Duration
	set *bool
}

func (v durationFlag) String() string {
	if v.d == nil {
		return ""
	}
	return v.d.String()
}

func (v durationFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*v.d, *v.set = d, true
	return nil
}

// gdbHint tells how to attach the debugger to a guest waiting for it, with
// the kernel's symbols when they are on disk.
func gdbHint(addr string, k *kernels.Kernel) string {
	gdb := "gdb"
	if k.Arch != "" && k.Arch != runtime.GOARCH {
		gdb = "gdb-multiarch" // the host's gdb knows its own architecture only
	}
	if k.Vmlinux != "" {
		return fmt.Sprintf("vmtest: the guest waits for a debugger: %s -ex 'target remote %s' %s\n"+
			"vmtest: (then, say, hbreak start_kernel and continue; the kernel runs without KASLR)", gdb, addr, quoteWords([]string{k.Vmlinux}))
	}
	how := "vmtest kernels -fetch " + k.Name + " -debug fetches them"
	if k.Source == kernels.SourceLocal {
		how = "put the build's vmlinux beside its image"
	}
	return fmt.Sprintf("vmtest: the guest waits for a debugger: %s -ex 'target remote %s'\n"+
		"vmtest: (then continue; the kernel runs without KASLR; no symbols: %s)", gdb, addr, how)
}

// vmFlags are the flags run and exec share; run passes them on to exec.
type vmFlags struct {
	kernel      string
	arch        string
	cpuModel    string
	firmware    string
	accel       string
	memory      int
	cpus        int
	timeout     time.Duration
	timeoutSet  bool // -timeout was given
	modules     string
	results     string
	console     bool
	qemu        string
	vms         int
	append      string
	init        string
	kaslr       bool
	dwarf       bool
	limits      struct{ output, artifacts sizeFlag }
	files       int
	share       string
	shareLimit  sizeFlag
	autoload    bool
	goroot      bool
	gdb         string
	shellOnFail bool
	// extraCommands are u-root commands the image needs besides the
	// default ones (vmtest shell's shell); not a flag.
	extraCommands []string
	commands      bool
}

func (f *vmFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.kernel, "kernel", kernels.DefaultVersion, "kernel to boot: a version ("+strings.Join(kernels.Available(), ", ")+" from Debian; others, tags like stable or mainline, and NAME@sha256:... from the OCI repository), \"all\" (the matrix: "+strings.Join(kernels.MatrixNames(""), ", ")+"), NAME/ARCH for another architecture (6.12/arm64), or a path to a kernel image (bzImage, arm64 Image); run takes a comma-separated list")
	fs.StringVar(&f.arch, "arch", kernels.DefaultArch, "guest architecture ("+strings.Join(kernels.Arches(), ", ")+") of the kernels named without one: 6.12/arm64 names it; test binaries are built for it (go test with GOARCH), other architectures than the host's run under emulation")
	fs.StringVar(&f.cpuModel, "cpu-model", "", "QEMU CPU model under software emulation (default max,-erms,-fsrm for x86-64: byte-wise string copies are slow under emulation; neoverse-n1 for arm64); KVM uses the host's")
	fs.StringVar(&f.firmware, "firmware", vmtest.FirmwareAuto, "guest firmware (x86-64): auto (QEMU's qboot if its data directory has it: it boots the kernel without probing the drives, about 0.1 s faster; else QEMU's default), qemu (QEMU's default, SeaBIOS), or a firmware file for QEMU's -bios")
	fs.StringVar(&f.accel, "accel", "auto", "accelerator: auto (probe KVM, else tcg), kvm or tcg; default from $VMTEST_ACCEL")
	fs.IntVar(&f.memory, "memory", 512, "guest memory in MiB")
	fs.IntVar(&f.cpus, "cpus", 2, "guest CPUs (2 by default: tests see GOMAXPROCS 2 and real SMP, as on a host; under TCG they share one host thread and boot as fast as 1)")
	f.timeout = defaultTimeout
	fs.Var(durationFlag{&f.timeout, &f.timeoutSet}, "timeout", "limit for one boot, from QEMU start to power-off (vmtest run -boot per-kernel: for each package's run in the kernel's guest)")
	fs.StringVar(&f.modules, "modules", "", "comma-separated kernel modules to load in the guest before the tests (with their dependencies)")
	fs.StringVar(&f.results, "results", "", "directory to keep results in")
	fs.BoolVar(&f.console, "console", false, "copy the guest console to the stderr of vmtest exec while it runs (under vmtest run it shows in the package output)")
	fs.StringVar(&f.qemu, "qemu", "", "qemu-system binary (default $VMTEST_QEMU or qemu-system-x86_64 for x86-64 guests, $VMTEST_QEMU_ARM64 or qemu-system-aarch64 for arm64)")
	fs.StringVar(&f.append, "append", "", "extra kernel command line")
	fs.BoolVar(&f.dwarf, "keep-dwarf", false, "put test binaries in the guest with their DWARF debug info (dropped by default: nothing in the guest reads it, and it costs boot time)")
	fs.StringVar(&f.gdb, "gdb", "", "HOST:PORT for QEMU's gdb stub (say localhost:1234): the guest waits for the debugger before its first instruction, the kernel runs without KASLR, the timeout becomes 24h unless -timeout is given, and vmtest prints the gdb command; vmtest run then boots one guest at a time")
	fs.BoolVar(&f.shellOnFail, "shell-on-fail", false, "when a test binary fails, keep its guest up with a shell on this terminal in its directory and environment (run: one guest at a time, go test -p=1, and -timeout=0 unless given); ignored, with a note, without a terminal (CI)")
	fs.BoolVar(&f.kaslr, "kaslr", false, "keep the kernel's address space randomization (vmtest boots with nokaslr: under emulation it makes boot times vary)")
	fs.StringVar(&f.init, "init", images.InitAgent, "guest PID 1: agent (vmtest's guest agent sets up the guest itself; fastest) or uroot (u-root's init sets up a full u-root system and starts the agent)")
	fs.IntVar(&f.vms, "vms", 0, "most guests to run at once, across all vmtest processes of this user (default: by CPUs and memory)")
	f.limits.output, f.limits.artifacts = 256<<20, 256<<20
	fs.Var(&f.limits.output, vmtest.FlagMaxOutput[1:], "most bytes one boot may send of test output plus kernel log (and of console log); more fails the run (K, M, G suffixes)")
	fs.Var(&f.limits.artifacts, vmtest.FlagMaxArtifacts[1:], "most bytes of artifacts one boot may send; more fails the run")
	fs.IntVar(&f.files, vmtest.FlagMaxArtifactFiles[1:], 10000, "most artifact files one boot may send; more fails the run")
	fs.BoolVar(&f.commands, "commands", true, "put u-root's uname, ip, mount, ls, grep... on the guest's PATH for tests that run them (about 5 MB of image; -commands=false for the smallest image)")
	fs.StringVar(&f.share, "share", "", "comma-separated host paths to put in the guest at the same paths, besides the test's Go module (say a data directory)")
	f.shareLimit = 1 << 30
	fs.Var(&f.shareLimit, "share-limit", "most bytes of files (the test's Go module and -share) to give the guest; they go on a disk the guest reads as files are opened, so size costs the boot little but the host a copy where a hard link is not possible; more fails before boot")
	fs.BoolVar(&f.goroot, "goroot", true, "(run, exec) give the guest the Go installation that runs the tests (go env GOROOT) at its path, read-only, its bin/ first on PATH, as go test has it: tests that read GOROOT's sources (go/importer) or run go work (a disk image made once per Go version)")
	fs.BoolVar(&f.autoload, "autoload", true, "give the guest all of the kernel's modules (a disk image made once per kernel) and load one when the kernel asks for it, as modprobe does on a host (a test creating a geneve link or a flower filter needs no -modules)")
}

// check refuses flag values no guest can run with.
func (f *vmFlags) check() error {
	var errs []error
	if f.gdb != "" {
		if _, port, err := net.SplitHostPort(f.gdb); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("-gdb %q: give HOST:PORT, say localhost:1234", f.gdb))
		}
		f.forAPerson()
		f.vms = 1 // one stub, one port
	}
	if f.cpus < 1 || f.cpus > 255 {
		errs = append(errs, fmt.Errorf("-cpus %d: give 1 to 255", f.cpus))
	}
	if f.memory < 128 {
		errs = append(errs, fmt.Errorf("-memory %d: give at least 128 (MiB)", f.memory))
	}
	if f.timeout <= 0 {
		errs = append(errs, fmt.Errorf("-timeout %s: give a positive duration, e.g. 10m", f.timeout))
	}
	if f.vms < 0 {
		errs = append(errs, fmt.Errorf("-vms %d: give 0 (by CPUs and memory) or more", f.vms))
	}
	if f.limits.output <= 0 || f.limits.artifacts <= 0 || f.files <= 0 || f.shareLimit <= 0 {
		errs = append(errs, errors.New("-max-output, -max-artifacts, -max-artifact-files and -share-limit must be positive"))
	}
	if !slices.Contains(kernels.Arches(), f.arch) {
		errs = append(errs, fmt.Errorf("-arch %q: give one of %s", f.arch, strings.Join(kernels.Arches(), ", ")))
	}
	switch f.accel {
	case "auto", "kvm", "tcg", "":
	default:
		errs = append(errs, fmt.Errorf("-accel %q: give auto, kvm or tcg", f.accel))
	}
	switch f.init {
	case images.InitAgent, images.InitURoot:
	default:
		errs = append(errs, fmt.Errorf("-init %q: give %s or %s", f.init, images.InitAgent, images.InitURoot))
	}
	return errors.Join(errs...)
}

// options turns the flags into the options of one boot of the prepared
// kernel with base: the machine, the kernel command line, the image and the
// limits. Callers add the commands, files and output directory.
func (f *vmFlags) options(p *prepared, base string) vmtest.Options {
	return vmtest.Options{
		Kernel:     p.kernel.Image,
		BaseImage:  base,
		Modules:    p.modules,
		Trees:      p.trees,
		Accel:      f.accel,
		AccelCache: p.accelCache,
		QEMU:       f.qemu,
		CPUModel:   f.cpuModel,
		Firmware:   f.firmware,
		MemoryMB:   f.memory,
		CPUs:       f.cpus,
		Timeout:    f.timeout,
		Append:     f.append,
		KASLR:      f.kaslr && f.gdb == "",
		GDB:        f.gdb,
		KeepDWARF:  f.dwarf,
		Limits:     f.vmLimits(),
	}
}

// vmLimits is what the limit flags ask for.
func (f *vmFlags) vmLimits() vmtest.Limits {
	return vmtest.Limits{OutputBytes: int64(f.limits.output), ArtifactBytes: int64(f.limits.artifacts), ArtifactFiles: f.files}
}

// sizeFlag is a byte count given as a number with an optional K, M or G
// suffix (powers of 1024).
type sizeFlag int64

func (s *sizeFlag) String() string {
	v := int64(*s)
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"G", 30}, {"M", 20}, {"K", 10}} {
		if v != 0 && v%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", v>>u.shift, u.suffix)
		}
	}
	return fmt.Sprint(v)
}

func (s *sizeFlag) Set(v string) error {
	shift := 0
	num := strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(v)), "B")
	num = strings.TrimSuffix(num, "I")
	switch {
	case strings.HasSuffix(num, "K"):
		shift = 10
	case strings.HasSuffix(num, "M"):
		shift = 20
	case strings.HasSuffix(num, "G"):
		shift = 30
	}
	if shift > 0 {
		num = num[:len(num)-1]
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return fmt.Errorf("size %q: give bytes, or a number with K, M or G", v)
	}
	*s = sizeFlag(n << shift)
	return nil
}

// args renders the flags for a child `vmtest exec`.
func (f *vmFlags) args() []string {
	a := []string{
		"-kernel", f.kernel, "-arch", f.arch, "-accel", f.accel, "-memory", fmt.Sprint(f.memory), "-cpus", fmt.Sprint(f.cpus),
		"-timeout", f.timeout.String(), "-vms", fmt.Sprint(f.vms), "-init", f.init,
	}
	if f.modules != "" {
		a = append(a, "-modules", f.modules)
	}
	if f.console {
		a = append(a, "-console")
	}
	if f.qemu != "" {
		a = append(a, "-qemu", f.qemu)
	}
	if f.append != "" {
		a = append(a, "-append", f.append)
	}
	if f.cpuModel != "" {
		a = append(a, "-cpu-model", f.cpuModel)
	}
	if f.firmware != vmtest.FirmwareAuto {
		a = append(a, "-firmware", f.firmware)
	}
	if f.kaslr {
		a = append(a, "-kaslr")
	}
	if f.gdb != "" {
		a = append(a, "-gdb", f.gdb)
	}
	if f.shellOnFail {
		a = append(a, "-shell-on-fail")
	}
	if f.dwarf {
		a = append(a, "-keep-dwarf")
	}
	if f.share != "" {
		a = append(a, "-share", f.share)
	}
	if !f.commands {
		a = append(a, "-commands=false")
	}
	if !f.autoload {
		a = append(a, "-autoload=false")
	}
	if !f.goroot {
		a = append(a, "-goroot=false")
	}
	a = append(a, "-share-limit", f.shareLimit.String())
	a = append(a, vmtest.FlagMaxOutput, f.limits.output.String(), vmtest.FlagMaxArtifacts, f.limits.artifacts.String(),
		vmtest.FlagMaxArtifactFiles, fmt.Sprint(f.files))
	return a
}

func (f *vmFlags) moduleNames() []string {
	var names []string
	for _, m := range strings.Split(f.modules, ",") {
		if m = strings.TrimSpace(m); m != "" {
			names = append(names, m)
		}
	}
	return names
}

// prepared is what every boot on one kernel shares.
type prepared struct {
	kernel     *kernels.Kernel
	modules    []vmtest.Module
	trees      []vmtest.DiskTree // the kernel's modules (-autoload), GOROOT (-goroot)
	base       string
	accelCache string // where the KVM probe's answer is kept
}

// prepareKernel fetches the kernel and resolves the modules to load.
func prepareKernel(ctx context.Context, f *vmFlags, progress io.Writer) (*prepared, error) {
	cache, err := kernels.NewCache()
	if err != nil {
		return nil, err
	}
	cache.Progress = progress
	k, err := cache.Get(ctx, withArch(f.kernel, f.arch))
	if err != nil {
		return nil, err
	}
	p := &prepared{kernel: k, accelCache: filepath.Join(cache.Dir, "accel-probe.json")}
	if p.modules, err = vmtest.KernelModules(k, f.moduleNames()...); err != nil {
		return nil, err
	}
	if f.autoload && k.ModulesDir != "" {
		t, err := vmtest.ModulesDisk(ctx, k, cache.Dir)
		if err != nil {
			return nil, err
		}
		p.trees = append(p.trees, *t)
	}
	return p, nil
}

// prepare is prepareKernel plus the base image: from $VMTEST_BASE_IMAGE when
// vmtest run already built it, else built or found in the cache.
func prepare(ctx context.Context, f *vmFlags, progress io.Writer) (*prepared, error) {
	p, err := prepareKernel(ctx, f, progress)
	if err != nil {
		return nil, err
	}
	dir, err := cacheDir()
	if err != nil {
		return nil, err
	}
	if b := os.Getenv("VMTEST_BASE_IMAGE"); b != "" {
		p.base = b
		return p, nil
	}
	p.base, err = images.Base(ctx, f.baseOptions(dir, p.kernel.Arch, progress))
	if err != nil {
		return nil, err
	}
	return p, nil
}

// defaultVMs is how many guests fit: one per CPU (a TCG guest keeps a host
// CPU busy), and no more than half the memory allows.
func defaultVMs(memoryMB int) int {
	n := runtime.NumCPU()
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil && memoryMB > 0 {
		total := int(uint64(si.Totalram) * uint64(si.Unit) >> 20)
		if byMem := total / 2 / (memoryMB + 128); byMem < n {
			n = byMem
		}
	}
	return max(n, 1)
}

func cacheDir() (string, error) {
	c, err := kernels.NewCache()
	if err != nil {
		return "", err
	}
	return c.Dir, nil
}

// baseOptions are the options of the base image the flags ask for, for
// guests of arch.
func (f *vmFlags) baseOptions(cacheDir, arch string, progress io.Writer) images.BaseOptions {
	o := images.BaseOptions{CacheDir: filepath.Join(cacheDir, "images"), Progress: progress, Init: f.init, Self: selfPath(), Arch: arch}
	if !f.commands {
		o.Commands = []string{}
	} else if len(f.extraCommands) > 0 {
		o.Commands = append(slices.Clone(images.DefaultCommands), f.extraCommands...)
	}
	return o
}

// selfPath is this program, which can be the guest agent when vmtest runs
// without its source (installed with go install); "" if unknown.
func selfPath() string {
	p, err := os.Executable()
	if err != nil {
		return ""
	}
	return p
}

// guestOptions adds to opts what every guest of the kernel gets besides
// the command's own files: the host's Go installation where it can run, and
// the paths of an OCI kernel's selftests.
func guestOptions(ctx context.Context, f *vmFlags, p *prepared, opts vmtest.Options) (vmtest.Options, error) {
	dir, err := cacheDir()
	if err != nil {
		return opts, err
	}
	// The host's Go installation runs only in guests of its architecture.
	if f.goroot && p.kernel.Arch == runtime.GOARCH {
		t, err := gorootTree(ctx, dir)
		if err != nil {
			return opts, err
		}
		if t != nil {
			opts.Trees = append(opts.Trees, *t)
			opts.Env = append(opts.Env, "PATH="+filepath.Join(t.Dir, "bin")+":"+vmtest.GuestPath)
		}
	}
	if sel := p.kernel.Selftests; sel != "" {
		// Where cilium/ebpf's tests look for them (CI_KERNEL_SELFTESTS).
		opts.Env = append(opts.Env, "VMTEST_KERNEL_SELFTESTS="+sel, "CI_KERNEL_SELFTESTS="+sel)
	}
	return opts, nil
}

// guestSlot waits for one of the -vms guest slots, shared by every vmtest
// process of the user.
func guestSlot(ctx context.Context, f *vmFlags) (*slots.Slot, error) {
	dir, err := cacheDir()
	if err != nil {
		return nil, err
	}
	if f.vms == 0 {
		f.vms = defaultVMs(f.memory)
	}
	slot, err := slots.Acquire(ctx, filepath.Join(dir, "vm-slots"), f.vms)
	if err != nil {
		return nil, fmt.Errorf("wait for a free guest slot: %w", err)
	}
	return slot, nil
}

// bootGuest boots the one guest of vmtest exec or shell: with GOROOT's disk
// and its bin/ first on PATH under -goroot, in a free guest slot, after
// telling how to attach gdb under -gdb.
func bootGuest(ctx context.Context, f *vmFlags, p *prepared, opts vmtest.Options) (*vmtest.Result, error) {
	opts, err := guestOptions(ctx, f, p, opts)
	if err != nil {
		return nil, err
	}
	slot, err := guestSlot(ctx, f)
	if err != nil {
		return nil, err
	}
	defer slot.Release()
	if f.gdb != "" {
		opts.Started = func() { fmt.Fprintln(os.Stderr, gdbHint(f.gdb, p.kernel)) }
	}
	return vmtest.Run(ctx, opts)
}

// withArch names the kernel for arch unless the name has an architecture
// already or is a path (whose image says what it is).
func withArch(name, arch string) string {
	if arch == "" || arch == kernels.DefaultArch || strings.ContainsRune(name, '/') {
		return name
	}
	return name + "/" + arch
}

// nameArch is the architecture a kernel name asks for; "" for a path,
// whose image decides.
func nameArch(name string) string {
	if _, arch := kernels.SplitArch(name); arch != "" {
		return arch
	}
	if strings.ContainsRune(name, '/') {
		return ""
	}
	return kernels.DefaultArch
}
