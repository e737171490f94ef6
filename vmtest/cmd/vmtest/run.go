package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/skbstore/vmtest/vmtest"
	"github.com/skbstore/vmtest/vmtest/gotest"
)

func runCmd(ctx context.Context, args []string) (int, error) {
	fs := flag.NewFlagSet("vmtest run", flag.ContinueOnError)
	var f vmFlags
	f.register(fs)
	jsonOut := fs.Bool("json", false, "print go test -json events on stdout instead of the human-readable report")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: vmtest run [flags] [-- go test [packages] [go test flags]]\n\n"+
			"Runs go test with each test binary executed in a guest booted from -kernel (one boot per\n"+
			"package), then prints per-test results and \"N passed, N failed, N skipped\".\n"+
			"Exit status is 0 only when all tests passed and no guest failed or reported a kernel splat.\n"+
			"Results go to -results (default ./vmtest-results), in a directory per run:\n"+
			"  events.json            the go test -json stream\n"+
			"  <pkg>/console.log      the guest console       <pkg>/dmesg.log   the whole kernel log\n"+
			"  <pkg>/<pkg>.out        the test binary output  <pkg>/artifacts/  files the tests wrote to $VMTEST_ARTIFACTS\n"+
			"  <pkg>/result.json      the runner's view: accelerator, boot time, exit status, splats, failure\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, nil
		}
		return 2, errUsage
	}
	rest := fs.Args()
	if len(rest) == 0 {
		rest = []string{"go", "test", "./..."}
	}
	if len(rest) < 2 || rest[0] != "go" || rest[1] != "test" {
		return 2, fmt.Errorf("run wants a go test command after the flags, e.g. vmtest run -- go test ./pkg; to run a prebuilt binary use vmtest exec")
	}
	testArgs := rest[2:]
	for _, a := range testArgs {
		if a == "-json" || a == "--json" {
			*jsonOut = true
		}
	}
	progress := io.Writer(os.Stderr)

	p, err := prepare(ctx, &f, progress)
	if err != nil {
		return 1, err
	}
	fmt.Fprintf(progress, "kernel %s: %s (%s)\n", f.kernel, p.kernel.Release, describePackages(p))
	accel, err := vmtest.ChooseAccel(ctx, f.qemu, p.kernel.Image, f.accel)
	if err != nil {
		return 1, err
	}
	fmt.Fprintf(progress, "accelerator: %s\n", accel)
	f.accel = accel.Name

	runDir, err := newRunDir(f.results, f.kernel)
	if err != nil {
		return 1, err
	}
	self, err := os.Executable()
	if err != nil {
		return 1, err
	}
	execWords := append([]string{self, "exec"}, f.args()...)
	goArgs := append([]string{"test", "-json", "-exec", quoteWords(execWords)}, testArgs...)
	cmd := exec.CommandContext(ctx, "go", goArgs...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "VMTEST_RESULTS="+runDir, "VMTEST_BASE_IMAGE="+p.base)
	cmd.Stderr = os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 1, err
	}
	events, err := os.Create(filepath.Join(runDir, "events.json"))
	if err != nil {
		return 1, err
	}
	defer events.Close()

	r := &gotest.Reader{Raw: events}
	if *jsonOut {
		r.Raw = io.MultiWriter(events, os.Stdout)
	} else {
		r.OnTest = func(t *gotest.Test) {
			if strings.Contains(t.Name, "/") {
				return // subtests are in the final report when they fail
			}
			fmt.Printf("%-4s %s %s (%.2fs)\n", strings.ToUpper(t.Outcome), shortName(t.Package), t.Name, t.Elapsed.Seconds())
		}
		r.OnPackage = func(pk *gotest.Package) {
			fmt.Printf("%-4s package %s (%.1fs)\n", strings.ToUpper(pk.Outcome), pk.Name, pk.Elapsed.Seconds())
		}
	}
	fmt.Fprintf(progress, "running %s in kernel %s; results in %s\n", strings.Join(append([]string{"go", "test"}, testArgs...), " "), f.kernel, runDir)
	if err := cmd.Start(); err != nil {
		return 1, fmt.Errorf("start go test: %w", err)
	}
	sum, readErr := r.Read(stdout)
	waitErr := cmd.Wait()
	if !*jsonOut {
		sum.Print(os.Stdout)
	}
	fmt.Fprintf(progress, "results: %s\n", runDir)
	if readErr != nil {
		return 1, fmt.Errorf("read go test output: %w", readErr)
	}
	if ctx.Err() != nil {
		return 1, errors.New("interrupted")
	}
	if sum.Failed() {
		return 1, nil
	}
	if passed, _, skipped := sum.Counts(); passed+skipped == 0 {
		return 1, errors.New("no test ran: check the package patterns and -run")
	}
	if waitErr != nil {
		return 1, fmt.Errorf("go test: %w", waitErr)
	}
	return 0, nil
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

func shortName(pkg string) string {
	if i := strings.LastIndexByte(pkg, '/'); i >= 0 {
		return pkg[i+1:]
	}
	return pkg
}

// newRunDir makes results/<time>-<kernel> and points results/latest at it.
func newRunDir(results, kernel string) (string, error) {
	if results == "" {
		results = "vmtest-results"
	}
	name := time.Now().Format("20060102-150405") + "-" + strings.NewReplacer("/", "_", " ", "_").Replace(filepath.Base(kernel))
	dir := filepath.Join(results, name)
	for i := 2; ; i++ {
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			break
		}
		dir = filepath.Join(results, fmt.Sprintf("%s.%d", name, i))
	}
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
