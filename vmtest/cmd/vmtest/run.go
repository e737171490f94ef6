package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/skbstore/skbstore/images"
	"github.com/skbstore/skbstore/kernels"
	"github.com/skbstore/skbstore/vmtest"
	"github.com/skbstore/skbstore/vmtest/gotest"
	"github.com/skbstore/skbstore/vmtest/internal/history"
	"github.com/skbstore/skbstore/vmtest/internal/slots"
	"github.com/skbstore/skbstore/vmtest/report"
)

type runFlags struct {
	vmFlags
	json        bool
	suites      string
	rerunFailed string
	allowSkip   bool
	boot        string
}

func runCmd(ctx context.Context, args []string) (int, error) {
	fs := flag.NewFlagSet("vmtest run", flag.ContinueOnError)
	var f runFlags
	f.register(fs)
	fs.BoolVar(&f.json, "json", false, "print go test -json events on stdout instead of the human-readable report")
	fs.StringVar(&f.suites, "suites", "", "comma-separated test packages to run, by last path element (e.g. skbstore), out of the given patterns")
	fs.StringVar(&f.boot, "boot", bootPerKernel, "per-kernel: a guest of the kernel runs the packages' test binaries one after another, up to -vms guests of it when go test runs packages in parallel (each package with its own directory, environment, outputs and results; the kernel's state carries over as on a host), a package that crashes or hangs the guest fails alone and the rest go on in a fresh guest; per-package: a guest of its own for each test binary (package) and kernel")
	fs.BoolVar(&f.allowSkip, "allow-skip", false, "let a package whose every test skipped pass (by default it fails: nothing was checked)")
	fs.StringVar(&f.rerunFailed, "rerun-failed", "", "results directory of an earlier run: run again only its failed kernels, packages and tests")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: vmtest run [flags] [-- go test [packages] [go test flags]]\n\n"+
			"Runs go test with each test binary executed in a guest (one guest per kernel that runs the\n"+
			"packages one after another, or with -boot per-package one boot per package and kernel),\n"+
			"then prints per-test results and \"N passed, N failed, N skipped\". -kernel takes a\n"+
			"comma-separated list or \"all\"; kernels run in parallel, at most -vms guests at a time.\n"+
			"Exit status is 0 only when all tests passed and no guest failed or reported a kernel splat.\n"+
			"Ctrl-C stops the guests, keeps what was gathered and writes the reports, marking what did\n"+
			"not finish. Results go to -results (default ./vmtest-results), a directory per run:\n"+
			"  report.json, junit.xml, summary.md   the reports (summary.md is also appended to $GITHUB_STEP_SUMMARY)\n"+
			"  <kernel>/events.json                 the go test -json stream\n"+
			"  <kernel>/<pkg dir>/                  one boot: console.log, dmesg.log, <pkg>.out (test output),\n"+
			"                                       artifacts/ (files tests wrote to $VMTEST_ARTIFACTS), result.json\n"+
			"  <kernel>/.boot-N/                    -boot per-kernel: each guest's own console.log, dmesg.log, result.json\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, nil
		}
		return 2, errUsage
	}
	if err := f.check(); err != nil {
		return 2, err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		rest = []string{"go", "test", "./..."}
	}
	if len(rest) < 2 || rest[0] != "go" || rest[1] != "test" {
		return 2, fmt.Errorf("run wants a go test command after the flags, e.g. vmtest run -- go test ./pkg; to run a prebuilt binary use vmtest exec")
	}
	pkgs, testFlags, binArgs := splitGoTestArgs(rest[2:])
	for _, a := range testFlags {
		if a == "-json" || a == "--json" {
			f.json = true
		}
	}
	names, err := kernelNames(f.kernel, f.arch)
	if err != nil {
		return 2, err
	}
	perKernel := map[string][]string{} // extra go test args per kernel
	if f.rerunFailed != "" {
		names, pkgs, perKernel, err = rerunPlan(f.rerunFailed)
		if err != nil {
			return 2, err
		}
		if len(names) == 0 {
			fmt.Fprintf(os.Stderr, "vmtest: nothing failed in %s\n", f.rerunFailed)
			return 0, nil
		}
	}
	if f.suites != "" {
		pkgs, err = selectSuites(ctx, pkgs, splitList(f.suites))
		if err != nil {
			return 2, err
		}
	}
	if f.vms == 0 {
		f.vms = defaultVMs(f.memory)
	}
	switch f.boot {
	case bootPerPackage, bootPerKernel:
	default:
		return 2, fmt.Errorf("-boot %q: give %s or %s", f.boot, bootPerPackage, bootPerKernel)
	}
	if f.boot == bootPerKernel && (f.shellOnFail || f.gdb != "") {
		fmt.Fprintf(os.Stderr, "vmtest: -boot %s: -shell-on-fail and -gdb need a guest per package; booting per package\n", bootPerKernel)
		f.boot = bootPerPackage
	}
	if f.shellOnFail {
		testFlags = f.shellOnFailPlan(testFlags)
	}

	runDir, err := newRunDir(f.results)
	if err != nil {
		return 1, err
	}
	dir, err := cacheDir()
	if err != nil {
		return 1, err
	}
	fmt.Fprintf(os.Stderr, "vmtest: %s on kernel(s) %s, at most %d guest(s) at a time; results in %s\n",
		strings.Join(append([]string{"go test"}, rest[2:]...), " "), strings.Join(names, ", "), f.vms, runDir)

	// The guest image is built while the kernels are fetched: a kernel
	// that cannot be had fails at once, not after the build.
	baseCtx, cancelBase := context.WithCancel(ctx)
	defer cancelBase()
	base := &baseImages{ctx: baseCtx, build: func(ctx context.Context, arch string) (string, error) {
		return images.Base(ctx, f.baseOptions(dir, arch, os.Stderr))
	}}
	for _, n := range names {
		if a := nameArch(n); a != "" {
			base.start(a)
		}
	}

	rep := &report.Report{Started: time.Now()}
	st := newStatus(os.Stderr, names, !f.shellOnFail)
	m := &matrix{f: &f, base: base, runDir: runDir, st: st, pkgs: pkgs, testFlags: testFlags, binArgs: binArgs, perKernel: perKernel, kernels: len(names),
		history: history.Open(filepath.Join(dir, "history.json")),
		slots:   &slots.Queue{Dir: filepath.Join(dir, "vm-slots"), N: f.vms}}
	var wg sync.WaitGroup
	for _, n := range names {
		k := &report.Kernel{Name: n}
		rep.Kernels = append(rep.Kernels, k)
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.runKernel(ctx, k)
		}()
	}
	wg.Wait()
	st.done()
	if err := m.history.Save(); err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: %v\n", err)
	}
	rep.Finished = time.Now()
	rep.Interrupted = ctx.Err() != nil
	for _, k := range rep.Kernels {
		if err := report.KernelFromDir(runDir, filepath.Join(runDir, kernelDir(k.Name)), k, report.Options{AllowSkip: f.allowSkip}); err != nil {
			fmt.Fprintf(os.Stderr, "vmtest: %v\n", err)
		}
		if rep.Interrupted && k.Outcome != gotest.Pass && k.Outcome != gotest.Fail {
			k.Outcome = gotest.Unfinished
		}
	}
	if err := rep.Write(runDir); err != nil {
		return 1, fmt.Errorf("write reports: %w", err)
	}
	if p := os.Getenv("GITHUB_STEP_SUMMARY"); p != "" {
		if err := appendFile(p, rep.Markdown); err != nil {
			fmt.Fprintf(os.Stderr, "vmtest: write $GITHUB_STEP_SUMMARY: %v\n", err)
		}
	}
	if !f.json {
		printSummary(os.Stdout, rep)
	}
	fmt.Fprintf(os.Stderr, "vmtest: results in %s (report.json, junit.xml, summary.md)\n", runDir)
	if rep.Interrupted {
		return 130, errors.New("interrupted: guests stopped, partial results kept")
	}
	t := rep.Total()
	if rep.Failed() {
		return 1, nil
	}
	if t.Passed+t.Skipped == 0 {
		return 1, errors.New("no test ran: check the package patterns, -suites and -run")
	}
	return 0, nil
}

// baseImages are the guest images of a run, one per architecture, each
// built once, in the background from its first start.
type baseImages struct {
	ctx    context.Context
	build  func(ctx context.Context, arch string) (string, error)
	mu     sync.Mutex
	byArch map[string]*baseImage
}

type baseImage struct {
	done chan struct{}
	path string
	err  error
}

// start begins building the image for arch unless it is under way.
func (b *baseImages) start(arch string) *baseImage {
	b.mu.Lock()
	defer b.mu.Unlock()
	if im, ok := b.byArch[arch]; ok {
		return im
	}
	if b.byArch == nil {
		b.byArch = map[string]*baseImage{}
	}
	im := &baseImage{done: make(chan struct{})}
	b.byArch[arch] = im
	go func() {
		defer close(im.done)
		im.path, im.err = b.build(b.ctx, arch)
	}()
	return im
}

// wait returns the image for arch once built.
func (b *baseImages) wait(ctx context.Context, arch string) (string, error) {
	im := b.start(arch)
	select {
	case <-im.done:
		return im.path, im.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// matrix runs go test once per kernel.
type matrix struct {
	f         *runFlags
	base      *baseImages
	runDir    string
	st        *status
	pkgs      []string
	testFlags []string
	binArgs   []string // -args and what follows, for the test binaries
	kernels   int      // how many kernels run
	perKernel map[string][]string
	fetchMu   sync.Mutex // one download at a time: they share the disk and the network
	outMu     sync.Mutex
	// history has how long each package ran on each kernel (-boot
	// per-kernel): the guest servers start the longest first.
	history *history.Store
	// slots orders the guest servers' waits for a guest slot, the
	// longest package's first.
	slots *slots.Queue
}

func (m *matrix) runKernel(ctx context.Context, k *report.Kernel) {
	start := time.Now()
	defer func() { k.Duration = time.Since(start).Seconds() }()
	kdir := filepath.Join(m.runDir, kernelDir(k.Name))
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		k.Error = err.Error()
		return
	}
	m.st.set(k.Name, "fetching")
	m.fetchMu.Lock()
	kf := m.f.vmFlags
	kf.kernel = k.Name
	p, err := prepareKernel(ctx, &kf, io.Discard)
	if err == nil && kf.goroot {
		// Made once here rather than by the first guests at once.
		var dir string
		if dir, err = cacheDir(); err == nil {
			_, err = gorootTree(ctx, dir)
		}
	}
	m.fetchMu.Unlock()
	if err != nil {
		k.Error = err.Error()
		k.Outcome = gotest.Fail
		m.st.set(k.Name, "failed: "+err.Error())
		return
	}
	k.Release, k.Source = p.kernel.Release, p.kernel.Source
	for _, pk := range p.kernel.Packages {
		k.Packages = append(k.Packages, pk.Name+" "+pk.Version)
	}
	accel, err := vmtest.ChooseAccel(ctx, m.f.qemu, p.kernel.Image, m.f.accel, p.accelCache)
	if err != nil {
		k.Error = err.Error()
		m.st.set(k.Name, "failed: "+err.Error())
		return
	}
	m.st.println(os.Stderr, fmt.Sprintf("[%s] %s (%s), accelerator %s", k.Name, p.kernel.Release, describePackages(p), accel))
	base, err := m.base.wait(ctx, p.kernel.Arch)
	if err != nil {
		k.Error = fmt.Sprintf("build the guest image: %v", err)
		k.Outcome = gotest.Fail
		m.st.set(k.Name, "failed: "+k.Error)
		return
	}
	m.st.set(k.Name, "running")

	self, err := os.Executable()
	if err != nil {
		k.Error = err.Error()
		return
	}
	cwd, _ := os.Getwd()
	execWords := append([]string{self, "exec"}, kf.args()...)
	goArgs := append([]string{"test", "-json", "-exec", quoteWords(execWords)}, m.testFlags...)
	goArgs = append(goArgs, m.perKernel[k.Name]...)
	pkgs := m.pkgs
	if len(pkgs) == 0 {
		pkgs = []string{"./..."}
	}
	goArgs = append(goArgs, pkgs...)
	goArgs = append(goArgs, m.binArgs...)
	cgo := m.cgo()
	if cgo == "1" && p.kernel.Arch != runtime.GOARCH {
		k.Error = fmt.Sprintf("cgo and -race need a C toolchain for %s guests, which vmtest does not set up: run them on %s kernels, or build without cgo (CGO_ENABLED=0)", p.kernel.Arch, runtime.GOARCH)
		k.Outcome = gotest.Fail
		m.st.set(k.Name, "failed: "+k.Error)
		return
	}
	cmd := exec.Command("go", goArgs...)
	cmd.Env = append(os.Environ(), "GOARCH="+p.kernel.Arch, "CGO_ENABLED="+cgo, "VMTEST_RESULTS="+kdir, "VMTEST_RUN_ROOT="+cwd, "VMTEST_BASE_IMAGE="+base)
	if m.f.boot == bootPerKernel {
		srv, err := m.guestServer(ctx, &kf, p, base, cwd, kdir, k.Name)
		if err != nil {
			k.Error = err.Error()
			k.Outcome = gotest.Fail
			m.st.set(k.Name, "failed: "+k.Error)
			return
		}
		defer func() {
			// What no package's result holds (a guest that failed
			// between packages, a kernel report after the last one)
			// fails the kernel.
			if err := srv.close(); err != nil {
				k.Error = strings.Join(append([]string{k.Error}, err.Error()), "; ")
				k.Error = strings.TrimPrefix(k.Error, "; ")
				m.st.println(os.Stderr, fmt.Sprintf("[%s] %v", k.Name, err))
			}
		}()
		cmd.Env = append(cmd.Env, serverEnv+"="+srv.sock)
	}
	cmd.Stderr = os.Stderr
	// A process group of its own, so that stopping the run reaches go test
	// and every vmtest exec under it however the signal came; but a shell
	// on the terminal needs the terminal's foreground group (QEMU puts the
	// terminal in raw mode and reads it), where Ctrl-C reaches all anyway.
	ownGroup := !m.f.shellOnFail
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: ownGroup}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		k.Error = err.Error()
		return
	}
	events, err := os.Create(filepath.Join(kdir, "events.json"))
	if err != nil {
		k.Error = err.Error()
		return
	}
	defer events.Close()
	r := &gotest.Reader{Raw: events}
	if m.f.json {
		var out io.Writer = &lockedWriter{mu: &m.outMu, w: os.Stdout}
		if m.kernels > 1 {
			out = &kernelTag{w: out, kernel: k.Name}
		}
		r.Raw = io.MultiWriter(events, out)
	}
	r.OnTest = func(t *gotest.Test) {
		if strings.Contains(t.Name, "/") {
			return // subtests show in the final report when they fail
		}
		m.st.test(k.Name, t.Outcome == gotest.Fail)
		if !m.f.json {
			m.st.println(os.Stdout, fmt.Sprintf("%-4s [%s] %s %s (%.2fs)", strings.ToUpper(t.Outcome), k.Name, gotest.ShortName(t.Package), t.Name, t.Elapsed.Seconds()))
		}
	}
	if err := cmd.Start(); err != nil {
		k.Error = fmt.Sprintf("start go test: %v", err)
		return
	}
	// When the run is stopped, SIGINT makes each vmtest exec stop its guest
	// and keep what it has; SIGKILL follows if that takes too long.
	exited := make(chan struct{})
	defer close(exited)
	go func() {
		select {
		case <-exited:
			return
		case <-ctx.Done():
		}
		target := cmd.Process.Pid
		if ownGroup {
			target = -target
		}
		_ = syscall.Kill(target, syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(target, syscall.SIGKILL)
		}
	}()
	if _, err := r.Read(stdout); err != nil {
		k.Error = fmt.Sprintf("read go test output: %v", err)
	}
	_ = cmd.Wait()
	state := "done"
	if ctx.Err() != nil {
		state = "interrupted"
	}
	m.st.set(k.Name, fmt.Sprintf("%s in %.0fs", state, time.Since(start).Seconds()))
}

// guestServer starts the kernel's guest server (-boot per-kernel): the guest
// shares what a vmtest exec in the run's directory would (its module, -share
// paths), so every package of that tree can run in it.
func (m *matrix) guestServer(ctx context.Context, kf *vmFlags, p *prepared, base, cwd, kdir, name string) (*guestServer, error) {
	files, shares, err := guestFiles(cwd, kf, p, kdir)
	if err != nil {
		return nil, err
	}
	opts, err := guestOptions(ctx, kf, p, kf.options(p, base))
	if err != nil {
		return nil, err
	}
	opts.Files, opts.Shares = files, shares
	var roots []string
	for _, sh := range shares {
		roots = append(roots, sh.Path)
	}
	return startGuestServer(ctx, serverConfig{kernel: name, f: kf, opts: opts, roots: roots, dir: kdir, history: m.history, slots: m.slots})
}

// shellOnFailPlan makes a run fit for -shell-on-fail: one guest at a time
// on the terminal (one kernel, one package: go test -p=1), and no kill by
// go test while a person is in the shell (-timeout=0 unless one was given:
// go test kills a test binary, here vmtest exec, a minute after its
// -timeout). Without a terminal the flag is dropped with a note.
func (f *runFlags) shellOnFailPlan(testFlags []string) []string {
	tty, err := openTTY()
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: -shell-on-fail ignored: %v\n", err)
		f.shellOnFail = false
		return testFlags
	}
	tty.Close()
	f.vms = 1
	f.extraCommands = []string{shellPackage} // the base image is built here, for all guests
	testFlags = append(slices.Clone(testFlags), "-p=1")
	if !slices.ContainsFunc(testFlags, func(a string) bool {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		return strings.HasPrefix(a, "-") && name == "timeout"
	}) {
		testFlags = append(testFlags, "-timeout=0")
	}
	return testFlags
}

// kernelTag adds a "Kernel" field to each go test -json event, so that the
// streams of several kernels on one stdout can be told apart.
type kernelTag struct {
	w      io.Writer
	kernel string
	buf    []byte
}

func (k *kernelTag) Write(p []byte) (int, error) {
	if len(p) == 0 || p[0] != '{' {
		return k.w.Write(p)
	}
	field, _ := json.Marshal(k.kernel)
	k.buf = append(append(k.buf[:0], `{"Kernel":`...), field...)
	if rest := bytes.TrimLeft(p[1:], " \t"); len(rest) > 0 && rest[0] != '}' {
		k.buf = append(k.buf, ',')
	}
	k.buf = append(k.buf, p[1:]...)
	if _, err := k.w.Write(k.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// cgo is the CGO_ENABLED go test builds with: as the user set it, 1 for
// -race (which needs cgo), else 0: a static binary needs no libraries in the
// guest and makes a smaller image.
func (m *matrix) cgo() string {
	if v := os.Getenv("CGO_ENABLED"); v != "" {
		return v
	}
	for _, f := range m.testFlags {
		if f == "-race" || f == "--race" || f == "-race=true" || f == "--race=true" {
			return "1"
		}
	}
	return "0"
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// kernelDir names a kernel's results directory: the version, or for a local
// kernel its path flattened into one name.
func kernelDir(name string) string {
	d := strings.Trim(strings.ReplaceAll(name, "/", "_"), "_.")
	if d == "" {
		d = "kernel"
	}
	return d
}

// kernelNames lists the kernels -kernel names, each for arch unless it names
// its own architecture.
func kernelNames(s, arch string) ([]string, error) {
	var names []string
	switch s {
	case "all":
		names = kernels.MatrixNames("")
	case kernels.SourceDebian, kernels.SourceOCI:
		names = kernels.MatrixNames(s)
	default:
		names = splitList(s)
	}
	if len(names) == 0 {
		return nil, errors.New("no kernel given")
	}
	matrix := s == "all" || s == kernels.SourceDebian || s == kernels.SourceOCI
	seen := map[string]bool{}
	var out []string
	for _, n := range names {
		n = withArch(n, arch)
		if seen[n] && matrix {
			continue // the matrix names it for both architectures
		}
		if seen[n] {
			return nil, fmt.Errorf("kernel %s given twice", n)
		}
		seen[n] = true
		out = append(out, n)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// rerunPlan reads an earlier run's report.json and returns the kernels,
// packages and per-kernel -run filters that cover what failed there.
func rerunPlan(dir string) (names, pkgs []string, perKernel map[string][]string, err error) {
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("rerun-failed: %w", err)
	}
	var rep report.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, nil, nil, fmt.Errorf("rerun-failed: %s: %w", dir, err)
	}
	perKernel = map[string][]string{}
	pkgSet := map[string]bool{}
	for _, k := range rep.Kernels {
		if k.Outcome == gotest.Pass {
			continue
		}
		tests := map[string]bool{}
		whole := k.Error != "" || len(k.Suites) == 0
		for _, s := range k.Suites {
			if s.Outcome == gotest.Pass || s.Outcome == gotest.Skip {
				continue
			}
			pkgSet[s.Package] = true
			failedTests := 0
			for _, t := range s.Tests {
				if t.Outcome == gotest.Fail || t.Outcome == gotest.Unfinished {
					top, _, _ := strings.Cut(t.Name, "/")
					tests[top] = true
					failedTests++
				}
			}
			if failedTests == 0 || s.Failure != nil || len(s.Splats) > 0 {
				whole = true
			}
		}
		names = append(names, k.Name)
		if !whole && len(tests) > 0 {
			var list []string
			for t := range tests {
				list = append(list, regexp.QuoteMeta(t))
			}
			sort.Strings(list)
			perKernel[k.Name] = []string{"-run", "^(" + strings.Join(list, "|") + ")$"}
		}
	}
	for p := range pkgSet {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	return names, pkgs, perKernel, nil
}

func printSummary(w io.Writer, rep *report.Report) {
	for _, k := range rep.Kernels {
		if k.Error != "" {
			fmt.Fprintf(w, "\n--- FAIL: kernel %s: %s\n", k.Name, k.Error)
		}
		for _, s := range k.Suites {
			for _, t := range s.Tests {
				if t.Outcome == gotest.Fail || t.Outcome == gotest.Unfinished {
					fmt.Fprintf(w, "\n--- %s: [%s] %s.%s\n%s", strings.ToUpper(t.Outcome), k.Name, s.Name, t.Name, gotest.Indent(t.Output))
				}
			}
			for _, f := range s.Faults {
				fmt.Fprintf(w, "\n--- FAIL: [%s] %s: %s\n", k.Name, s.Name, f)
			}
			if p := s.Failure; p != nil {
				fmt.Fprintf(w, "\n--- FAIL: [%s] %s: guest %s\n%s", k.Name, s.Name, p.Error(), gotest.Indent(s.Output))
			} else if s.Outcome != gotest.Pass && s.Outcome != gotest.Skip && s.Counts.Failed+s.Counts.Unfinished > 0 && !hasFailedTest(s) {
				fmt.Fprintf(w, "\n--- %s: [%s] package %s\n%s", strings.ToUpper(s.Outcome), k.Name, s.Package, gotest.Indent(s.Output))
			}
			for _, sp := range s.Splats {
				fmt.Fprintf(w, "\n--- FAIL: [%s] %s: kernel %s: %s\n", k.Name, s.Name, sp.Kind, sp.Line)
			}
		}
	}
	t := rep.Total()
	fmt.Fprintln(w)
	for _, k := range rep.Kernels {
		fmt.Fprintf(w, "kernel %-6s %-10s %d passed, %d failed, %d skipped (%s)\n", k.Name, k.Outcome, k.Counts.Passed, k.Counts.Failed+k.Counts.Unfinished, k.Counts.Skipped, k.Release)
	}
	fmt.Fprintf(w, "%d passed, %d failed, %d skipped\n", t.Passed, t.Failed+t.Unfinished, t.Skipped)
}

func hasFailedTest(s *report.Suite) bool {
	for _, t := range s.Tests {
		if t.Outcome == gotest.Fail || t.Outcome == gotest.Unfinished {
			return true
		}
	}
	return false
}

func describePackages(p *prepared) string {
	var s []string
	for _, pk := range p.kernel.Packages {
		s = append(s, pk.Name+" "+pk.Version)
	}
	if len(s) == 0 {
		return p.kernel.Source + " " + p.kernel.Image
	}
	return strings.Join(s, ", ")
}

// newRunDir makes results/<time> and points results/latest at it.
func newRunDir(results string) (string, error) {
	if results == "" {
		results = "vmtest-results"
	}
	dir := freshPath(filepath.Join(results, time.Now().Format("20060102-150405")))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	latest := filepath.Join(results, "latest")
	_ = os.Remove(latest)
	_ = os.Symlink(filepath.Base(dir), latest)
	return abs, nil
}

// freshPath returns path, or path.2, path.3... when it exists already.
func freshPath(path string) string {
	p := path
	for i := 2; ; i++ {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			return p
		}
		p = fmt.Sprintf("%s.%d", path, i)
	}
}

func appendFile(path string, fn func(io.Writer) error) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if err := fn(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// quoteWords joins words for go test's -exec, which splits on spaces and
// honours single and double quotes.
func quoteWords(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		if w == "" || strings.ContainsAny(w, " \t\n'\"") {
			if strings.Contains(w, "'") {
				w = `"` + w + `"`
			} else {
				w = "'" + w + "'"
			}
		}
		q[i] = w
	}
	return strings.Join(q, " ")
}
