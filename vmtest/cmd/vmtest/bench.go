package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/u-root/mkuimage/cpio"

	"github.com/skbstore/skbstore/images"
	"github.com/skbstore/skbstore/vmtest"
)

// benchCmd measures the runner against the floor: the same kernel and QEMU
// machine booting a trivial /init that powers off at once.
func benchCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("vmtest bench", flag.ContinueOnError)
	var f vmFlags
	f.register(fs)
	n := fs.Int("n", 7, "boots per kernel and kind; the median is reported")
	out := fs.String("out", "", "also write the table to this file (default <results>/bench-runner.md)")
	packages := fs.Int("packages", 46, "also time a module of this many small one-test packages on the first kernel, with each -boot mode, against the floor; 0 skips it")
	workloadArgs := fs.String("workload", "", "also time `go test ARGS` (packages and flags, e.g. './suites/skbstore ./suites/tagflow') on every kernel that booted, run from the current directory, against the floor")
	workloadModules := fs.String("workload-modules", "", "kernel modules for the -workload run (-modules there; the boots measured against the floor load none)")
	cold := fs.Bool("cold", true, "also measure the cold-cache costs (kernel fetch into an empty cache, needs the network; image build)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: vmtest bench [flags]\n\n"+
			"With -cold, first fetches each -kernel (comma-separated or \"all\") into an empty cache and builds\n"+
			"the base image into an empty cache, timing both (your cache is not touched). Then, for each\n"+
			"kernel, boots -n times a trivial static /init that powers off (the floor), -n times the same\n"+
			"/init running the trivial test binary first (floor+test: what starting any Go test costs), -n\n"+
			"times the runner with the trivial test and -n times the same with the other -init, interleaved,\n"+
			"and prints medians: QEMU start to exit, the ratios runner/floor and runner/(floor+test) (vmtest's\n"+
			"own share), QEMU start to /init (host clock), /init to power-off (the guest's clock), QEMU\n"+
			"start to the first test event and QEMU's peak memory. Then runs the trivial test\n"+
			"over all the kernels one at a time and -vms at a time. Then times real vmtest runs (workloads):\n"+
			"a module of -packages small packages on the first kernel and, with -workload, your go test on\n"+
			"every kernel that booted (per suite: its guest time and, where it publishes case_fixed_ms\n"+
			"metrics, its per-case fixed cost), each with -boot per-package and per-kernel, against the\n"+
			"floor. Under software emulation absolute times mean little; compare the ratios, measured in\n"+
			"one run.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if f.gdb != "" {
		return errors.New("-gdb is for run, exec and shell: bench measures boots nobody stops")
	}
	if err := f.check(); err != nil {
		return err
	}
	names, err := kernelNames(f.kernel, f.arch)
	if err != nil {
		return err
	}
	if f.vms == 0 {
		f.vms = defaultVMs(f.memory)
	}
	tmp, err := os.MkdirTemp("", "vmtest-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	dir, err := cacheDir()
	if err != nil {
		return err
	}
	// The other init, to show what it changes in the same run.
	otherInit := images.InitAgent
	if f.init == images.InitAgent {
		otherInit = images.InitURoot
	}
	var coldReport string
	if *cold {
		rows, image, size, err := coldCosts(ctx, names, f.init)
		if err != nil {
			return fmt.Errorf("cold-cache costs: %w", err)
		}
		coldReport = coldTable(rows, image, size, f.init)
	}

	b := &bench{f: &f, n: *n, otherInit: otherInit, cacheDir: dir, arches: map[string]*benchArch{},
		tmp: tmp, resultsDir: cmp.Or(f.results, "vmtest-results"), preps: map[string]*prepared{}}
	for _, name := range names {
		if err := b.kernel(ctx, name); err != nil {
			return err
		}
	}
	// The matrix: the trivial test on every kernel, one at a time, then
	// -vms at a time.
	seq, err := b.matrix(ctx, names, 1)
	if err != nil {
		b.failures = append(b.failures, fmt.Sprintf("matrix one at a time: %v", err))
	}
	par, err := b.matrix(ctx, names, f.vms)
	if err != nil {
		b.failures = append(b.failures, fmt.Sprintf("matrix %d at a time: %v", f.vms, err))
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var booted []string
	for _, r := range b.rows {
		booted = append(booted, r.kernel)
	}
	var works []*workload
	boots := []string{bootPerPackage, bootPerKernel}
	if *packages > 0 && len(booted) > 0 {
		dir := filepath.Join(tmp, "packages")
		err := manyPackages(dir, *packages)
		for _, boot := range boots {
			w := &workload{name: fmt.Sprintf("%d small packages, boot %s", *packages, boot), kernels: booted[:1], err: err}
			if err == nil {
				w = b.runWorkload(ctx, w.name, dir, boot, booted[:1], []string{"./..."})
			}
			works = append(works, w)
		}
	}
	if *workloadArgs != "" && len(booted) > 0 {
		cwd, err := os.Getwd()
		if err != nil {
			return err
		}
		b.workloadModules = *workloadModules
		for _, boot := range boots {
			w := b.runWorkload(ctx, "go test "+*workloadArgs+", boot "+boot, cwd, boot, booted, strings.Fields(*workloadArgs))
			w.suites = true
			works = append(works, w)
		}
	}
	for _, w := range works {
		if w.err != nil {
			b.failures = append(b.failures, fmt.Sprintf("workload %v", w.err))
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	table := b.render(len(names), seq, par, coldReport) + b.renderWorkloads(works)
	fmt.Print(table)

	path := *out
	if path == "" {
		if err := os.MkdirAll(b.resultsDir, 0o755); err != nil {
			return err
		}
		path = filepath.Join(b.resultsDir, "bench-runner.md")
	}
	if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "vmtest: bench table written to %s\n", path)
	if len(b.failures) > 0 {
		return fmt.Errorf("%d boot(s) failed; see the end of %s", len(b.failures), path)
	}
	return nil
}

// bench measures the runner against the floor; render makes the tables.
type bench struct {
	f               *vmFlags
	n               int // boots per kernel and kind
	otherInit       string
	cacheDir        string
	arches          map[string]*benchArch
	tmp, resultsDir string
	preps           map[string]*prepared
	rows            []benchRow
	failures        []string
	workloadModules string // -modules of the workloads
}

// benchArch is what the boots of one guest architecture use: the base
// images of both inits, the trivial test and the floor's initramfs, without
// and with the trivial test.
type benchArch struct {
	base, otherBase string
	trivial         string
	floorImg        string
	floorTestImg    string
}

// forArch builds (once) what guests of arch boot.
func (b *bench) forArch(ctx context.Context, arch string) (*benchArch, error) {
	if a, ok := b.arches[arch]; ok {
		return a, nil
	}
	a := &benchArch{}
	var err error
	if a.base, err = images.Base(ctx, b.f.baseOptions(b.cacheDir, arch, os.Stderr)); err != nil {
		return nil, err
	}
	otherOpts := b.f.baseOptions(b.cacheDir, arch, os.Stderr)
	otherOpts.Init = b.otherInit
	if a.otherBase, err = images.Base(ctx, otherOpts); err != nil {
		return nil, err
	}
	if err = a.build(ctx, filepath.Join(b.tmp, arch), arch); err != nil {
		return nil, err
	}
	b.arches[arch] = a
	return a, nil
}

// benchRow is one kernel's medians.
type benchRow struct {
	kernel, release                   string
	floor, runner, first, boot, other time.Duration
	// floorTest is the floor that also runs the trivial test binary.
	floorTest time.Duration
	// Medians of the time from QEMU's start to /init (host clock) and of
	// /init to power-off (the guest kernel's clock), for the floor and
	// the runner.
	floorInit, runInit time.Duration
	floorUser, runUser float64
	rss                int64
	accel              string
}

// failedDir is where the logs of a failed boot are kept.
func (b *bench) failedDir(name, kind string, i int) string {
	return filepath.Join(b.resultsDir, "bench-failures", fmt.Sprintf("%s-%s-%d", kernelDir(name), kind, i))
}

// kernel boots the floor, the runner and the other init -n times each on
// one kernel, interleaved, and adds its row; a failed boot is recorded and
// the others go on.
func (b *bench) kernel(ctx context.Context, name string) error {
	kf := *b.f
	kf.kernel = name
	p, err := prepareKernel(ctx, &kf, os.Stderr)
	if err != nil {
		return err
	}
	b.preps[name] = p
	a, err := b.forArch(ctx, p.kernel.Arch)
	if err != nil {
		return err
	}
	opts := b.f.options(p, a.base)
	opts.Commands = []vmtest.Command{{ID: "trivial", Binary: a.trivial, Args: trivialArgs}}
	var floors, floorTests, runs, firsts, boots, others []time.Duration
	var floorInits, runInits []time.Duration
	var floorUsers, runUsers []float64
	var rss int64
	var accel string
	// runKind boots the trivial test with base; a failed boot's logs are
	// kept.
	runKind := func(kind, base string, i int) (*vmtest.Result, error) {
		o := opts
		o.BaseImage = base
		o.OutDir = filepath.Join(b.tmp, fmt.Sprintf("%s-%s-%d", kernelDir(name), kind, i))
		res, err := vmtest.Run(ctx, o)
		if err == nil {
			err = res.Err()
		}
		if err != nil {
			kept := b.failedDir(name, kind, i)
			if os.MkdirAll(filepath.Dir(kept), 0o755) == nil && os.Rename(o.OutDir, kept) == nil {
				err = fmt.Errorf("%w (logs in %s)", err, kept)
			}
			return nil, err
		}
		return res, nil
	}
	// floorKind boots img as the floor (withTest: one that must have run
	// the trivial test); its console is kept when it fails.
	floorKind := func(kind, img string, withTest bool, i int) (*vmtest.FloorResult, error) {
		fl, err := vmtest.Floor(ctx, opts, img)
		if err == nil && withTest {
			err = floorTestErr(fl.Console)
		}
		if err != nil {
			if fl != nil {
				kept := b.failedDir(name, kind, i)
				if os.MkdirAll(kept, 0o755) == nil && os.WriteFile(filepath.Join(kept, "console.log"), []byte(fl.Console), 0o644) == nil {
					err = fmt.Errorf("%w (console in %s)", err, kept)
				}
			}
			return nil, err
		}
		return fl, nil
	}
	kinds := []struct {
		name string
		boot func(i int) (string, error)
	}{
		{"floor", func(i int) (string, error) {
			fl, err := floorKind("floor", a.floorImg, false, i)
			if err != nil {
				return "", err
			}
			floors = append(floors, fl.Duration)
			if fl.Kernel.InitAfter > 0 {
				floorInits = append(floorInits, fl.Kernel.InitAfter)
			}
			if u := fl.Kernel.UserSpace(); u > 0 {
				floorUsers = append(floorUsers, u)
			}
			accel = fl.Accel.Name
			return fmt.Sprintf("floor %.2fs (/init at %.2fs)", fl.Duration.Seconds(), fl.Kernel.InitAfter.Seconds()), nil
		}},
		{"floor+test", func(i int) (string, error) {
			fl, err := floorKind("floor-test", a.floorTestImg, true, i)
			if err != nil {
				return "", err
			}
			floorTests = append(floorTests, fl.Duration)
			return fmt.Sprintf("floor+test %.2fs", fl.Duration.Seconds()), nil
		}},
		{"runner", func(i int) (string, error) {
			res, err := runKind("init-"+b.f.init, a.base, i)
			if err != nil {
				return "", err
			}
			runs = append(runs, res.Duration)
			firsts = append(firsts, res.FirstOutput)
			boots = append(boots, res.Boot)
			if res.Kernel.InitAfter > 0 {
				runInits = append(runInits, res.Kernel.InitAfter)
			}
			if u := res.Kernel.UserSpace(); u > 0 {
				runUsers = append(runUsers, u)
			}
			rss = max(rss, res.QEMUMaxRSS)
			return fmt.Sprintf("runner %.2fs (/init at %.2fs)", res.Duration.Seconds(), res.Kernel.InitAfter.Seconds()), nil
		}},
		{"init " + b.otherInit, func(i int) (string, error) {
			res, err := runKind("init-"+b.otherInit, a.otherBase, i)
			if err != nil {
				return "", err
			}
			others = append(others, res.Duration)
			return fmt.Sprintf("with init %s %.2fs (/init at %.2fs)", b.otherInit, res.Duration.Seconds(), res.Kernel.InitAfter.Seconds()), nil
		}},
	}
	for i := 0; i < b.n; i++ {
		// Each boot kind takes each place of the round in turn, so whatever
		// the previous boot leaves on the host weighs on all of them alike.
		var done []string
		for k := range kinds {
			kind := kinds[(i+k)%len(kinds)]
			msg, err := kind.boot(i)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				b.failures = append(b.failures, fmt.Sprintf("kernel %s, %s, boot %d: %v", name, kind.name, i+1, err))
				fmt.Fprintf(os.Stderr, "bench %s #%d: %s FAILED: %v\n", name, i+1, kind.name, err)
				continue
			}
			done = append(done, msg)
		}
		fmt.Fprintf(os.Stderr, "bench %s #%d: %s\n", name, i+1, strings.Join(done, ", "))
	}
	if len(floors) == 0 || len(floorTests) == 0 || len(runs) == 0 || len(others) == 0 {
		b.failures = append(b.failures, fmt.Sprintf("kernel %s: no row, every boot of a kind failed", name))
		return nil
	}
	b.rows = append(b.rows, benchRow{kernel: name, release: p.kernel.Release, floor: median(floors), floorTest: median(floorTests), runner: median(runs),
		first: median(firsts), boot: median(boots), other: median(others), rss: rss, accel: accel,
		floorInit: medianOr(floorInits, -1), floorUser: medianOr(floorUsers, -1), runInit: medianOr(runInits, -1), runUser: medianOr(runUsers, -1)})
	return nil
}

// matrix runs the trivial test on every kernel, parallel guests at a time,
// and returns the wall time.
func (b *bench) matrix(ctx context.Context, names []string, parallel int) (time.Duration, error) {
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	start := time.Now()
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			p := b.preps[name]
			a := b.arches[p.kernel.Arch]
			opts := b.f.options(p, a.base)
			opts.OutDir = filepath.Join(b.tmp, "matrix-"+kernelDir(name)+fmt.Sprint(parallel))
			opts.Commands = []vmtest.Command{{ID: "trivial", Binary: a.trivial, Args: []string{"-test.run", "^TestPass$"}}}
			res, err := vmtest.Run(ctx, opts)
			if err == nil {
				err = res.Err()
			}
			mu.Lock()
			if err != nil && firstErr == nil {
				firstErr = fmt.Errorf("matrix on %s: %w", name, err)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return time.Since(start), firstErr
}

// render makes the Markdown tables of the measurements.
func (b *bench) render(kernels int, seq, par time.Duration, coldReport string) string {
	f := b.f
	accel := "unknown"
	if len(b.rows) > 0 {
		accel = b.rows[0].accel
	}
	var w strings.Builder
	fmt.Fprintf(&w, "## Runner against the floor (median of %d boots each, accelerator %s, %d vCPU, %d MiB)\n\n", b.n, accel, max(f.cpus, 1), f.memory)
	w.WriteString("Floor: the same kernel and QEMU machine booting a static /init that powers off at once.\n")
	w.WriteString("Floor+test: the same /init first running the trivial test binary from the initramfs, with nothing set up: what any\n")
	w.WriteString("runner of a Go test pays at least (a second Go program started under the same emulation); runner/(floor+test) is vmtest's own share.\n")
	fmt.Fprintf(&w, "Runner: vmtest with init %q (-init), the guest agent and a trivial Go test; the last columns run the same with init %q.\n", f.init, b.otherInit)
	w.WriteString("Times are QEMU start to exit; \"QEMU start to /init\" is when the console showed the kernel starting /init, on the\n")
	w.WriteString("host's clock (the kernel's own clock starts at a point of its boot that varies under emulation), \"/init to power-off\"\n")
	w.WriteString("is read from the guest kernel's clock on the console (floor / runner). Under software emulation absolute times\n")
	w.WriteString("mean little, and one run's medians move by a tenth from run to run on a busy machine: compare the ratios.\n\n")
	fmt.Fprintf(&w, "| kernel | release | floor | floor+test | runner | runner/floor | (floor+test)/floor | runner/(floor+test) | QEMU start to /init | /init to power-off | first test event | agent up | QEMU peak RSS | init %s | ratio |\n", b.otherInit)
	w.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range b.rows {
		fmt.Fprintf(&w, "| %s | %s | %.2fs | %.2fs | %.2fs | %.2f | %.2f | %.2f | %s / %s | %s / %s | %.2fs | %.2fs | %d MiB | %.2fs | %.2f |\n", r.kernel, r.release,
			r.floor.Seconds(), r.floorTest.Seconds(), r.runner.Seconds(), r.runner.Seconds()/r.floor.Seconds(),
			r.floorTest.Seconds()/r.floor.Seconds(), r.runner.Seconds()/r.floorTest.Seconds(),
			secondsOrNA(r.floorInit.Seconds()), secondsOrNA(r.runInit.Seconds()), secondsOrNA(r.floorUser), secondsOrNA(r.runUser),
			r.first.Seconds(), r.boot.Seconds(), r.rss>>20, r.other.Seconds(), r.other.Seconds()/r.floor.Seconds())
	}
	fmt.Fprintf(&w, "\n## Matrix of %d kernels, trivial test\n\n| guests at a time | wall |\n|---:|---:|\n| 1 | %.1fs |\n| %d | %.1fs |\n",
		kernels, seq.Seconds(), f.vms, par.Seconds())
	fmt.Fprintf(&w, "\nparallel/sequential: %.2f\n", par.Seconds()/seq.Seconds())
	if coldReport != "" {
		w.WriteString("\n" + coldReport)
	}
	if len(b.failures) > 0 {
		w.WriteString("\n## Failed boots\n\nMedians above are over the boots that succeeded.\n\n")
		for _, m := range b.failures {
			fmt.Fprintf(&w, "- %s\n", strings.ReplaceAll(m, "\n", " "))
		}
	}
	return w.String()
}

// medianOr is the median of xs, or none when there is no sample.
func medianOr[T cmp.Ordered](xs []T, none T) T {
	if len(xs) == 0 {
		return none
	}
	return median(xs)
}

// secondsOrNA formats a time in seconds, negative for one not measured: a
// kernel that prints its console from a thread (7.3) may not have printed
// the power-off line when QEMU exits.
func secondsOrNA(s float64) string {
	if s < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fs", s)
}

func median[T cmp.Ordered](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// trivialArgs run the trivial test binary's one passing test, as go test
// -json would.
var trivialArgs = []string{"-test.v=test2json", "-test.run", "^TestPass$"}

// floorTestPassed is what floorinit prints when its test passed.
const floorTestPassed = "floorinit: test passed"

// build builds the trivial test binary and the floor's initramfs, without
// and with that test, for guests of arch.
func (a *benchArch) build(ctx context.Context, tmp, arch string) error {
	src, err := images.SourceDir(ctx, "")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	a.trivial = filepath.Join(tmp, "trivial.test")
	floorBin := filepath.Join(tmp, "floorinit")
	for _, b := range [][]string{
		{"test", "-c", "-o", a.trivial, "./vmtest/testdata/sample"},
		{"build", "-trimpath", "-ldflags=-s -w", "-o", floorBin, "./vmtest/internal/floorinit"},
	} {
		cmd := exec.CommandContext(ctx, "go", b...)
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOARCH="+arch)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %w: %s", strings.Join(b, " "), err, out)
		}
	}
	initBin, err := os.ReadFile(floorBin)
	if err != nil {
		return err
	}
	a.floorImg = filepath.Join(tmp, "floor.cpio")
	if err := writeFloorImage(a.floorImg, initBin, nil); err != nil {
		return err
	}
	// The test binary as the runner gives it (no DWARF, -keep-dwarf aside).
	test, _, err := images.File{Host: a.trivial, StripDWARF: true}.Contents()
	if err != nil {
		return err
	}
	a.floorTestImg = filepath.Join(tmp, "floor-test.cpio")
	return writeFloorImage(a.floorTestImg, initBin, floorTestRecords(test, trivialArgs))
}

// floorTestRecords are what makes floorinit run test with args: /test and
// /test.args, an argument a line.
func floorTestRecords(test []byte, args []string) []cpio.Record {
	return []cpio.Record{
		cpio.StaticRecord(test, cpio.Info{Name: "test", Mode: cpio.S_IFREG | 0o755, FileSize: uint64(len(test)), NLink: 1}),
		cpio.StaticFile("test.args", strings.Join(args, "\n")+"\n", 0o644),
	}
}

// floorTestErr says why a floor+test boot whose console is con does not
// count: its test did not run and pass, so its time would be no reference.
func floorTestErr(con string) error {
	if strings.Contains(con, floorTestPassed) {
		return nil
	}
	l := strings.Split(strings.TrimSpace(con), "\n")
	return fmt.Errorf("the trivial test did not pass: %s", strings.Join(l[max(0, len(l)-5):], " | "))
}

// writeFloorImage writes a floor's initramfs: /dev/console, init as /init
// and extra.
func writeFloorImage(path string, initBin []byte, extra []cpio.Record) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := cpio.NewDedupWriter(cpio.Newc.Writer(f))
	recs := append([]cpio.Record{
		cpio.Directory("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.StaticRecord(initBin, cpio.Info{Name: "init", Mode: cpio.S_IFREG | 0o755, FileSize: uint64(len(initBin)), NLink: 1}),
	}, extra...)
	err = cpio.WriteRecordsAndDirs(w, recs)
	if err == nil {
		err = cpio.WriteTrailer(w)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
