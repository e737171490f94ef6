package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/skbstore/skbstore/vmtest/report"
)

// A workload is a real `vmtest run` (this program, go test and all) that the
// bench times against the floor measured in the same bench: many small
// packages (a cilium/ebpf-sized suite: one boot each) and, with -workload,
// the user's own go test over every bench kernel.
type workload struct {
	name    string
	kernels []string
	suites  bool // show each suite's time per kernel
	pkgs    int  // packages run
	boots   int  // guests booted (packages that carry a boot)
	wall    time.Duration
	rep     *report.Report
	err     error
}

// manyPackages writes a module of n packages with one passing test each.
func manyPackages(dir string, n int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module benchpkgs\n\ngo 1.22\n"), 0o644); err != nil {
		return err
	}
	for i := range n {
		pkg := fmt.Sprintf("p%02d", i)
		src := fmt.Sprintf("package %s\n\nimport \"testing\"\n\nfunc TestPass(t *testing.T) {}\n", pkg)
		if err := os.MkdirAll(filepath.Join(dir, pkg), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, pkg, pkg+"_test.go"), []byte(src), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// runWorkload runs `vmtest run` on kernels in dir with goTest (go test's
// packages and flags). Its packages are compiled first, on the host, so that
// the figure is a re-run's: boots and tests, not the first compile.
func (b *bench) runWorkload(ctx context.Context, name, dir, boot string, kernels []string, goTest []string) *workload {
	w := &workload{name: name, kernels: kernels}
	self, err := os.Executable()
	if err != nil {
		w.err = err
		return w
	}
	pkgs, _, _ := splitGoTestArgs(goTest)
	warm := exec.CommandContext(ctx, "go", append([]string{"test", "-count=1", "-run", "^$"}, pkgs...)...)
	warm.Dir = dir
	warm.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := warm.CombinedOutput(); err != nil {
		w.err = fmt.Errorf("compile %s: %w: %s", name, err, tailLines(out, 5))
		return w
	}
	results := filepath.Join(b.tmp, "workload-"+strings.NewReplacer(" ", "-", "/", "_", ",", "").Replace(name))
	kf := *b.f
	kf.kernel = strings.Join(kernels, ",")
	kf.modules = b.workloadModules
	args := append([]string{"run"}, kf.args()...)
	args = append(args, "-boot", boot, "-results", results, "--", "go", "test", "-count=1")
	args = append(args, goTest...)
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Dir = dir
	fmt.Fprintf(os.Stderr, "bench workload %s: vmtest %s\n", name, strings.Join(args, " "))
	start := time.Now()
	out, err := cmd.CombinedOutput()
	w.wall = time.Since(start)
	if err != nil {
		w.err = fmt.Errorf("%s: %w: %s", name, err, tailLines(out, 10))
	}
	data, rerr := os.ReadFile(filepath.Join(results, "latest", "report.json"))
	if rerr == nil {
		w.rep = &report.Report{}
		rerr = json.Unmarshal(data, w.rep)
	}
	if rerr != nil {
		w.rep = nil
		if w.err == nil {
			w.err = fmt.Errorf("%s: read its report: %w", name, rerr)
		}
		return w
	}
	for _, k := range w.rep.Kernels {
		w.pkgs += len(k.Suites)
		for _, st := range k.Suites {
			if st.BootSeconds > 0 {
				w.boots++
			}
		}
	}
	return w
}

// floorOf returns the floor median of kernel, 0 if it has no row.
func (b *bench) floorOf(kernel string) time.Duration {
	for _, r := range b.rows {
		if r.kernel == kernel {
			return r.floor
		}
	}
	return 0
}

// meanFloor is the mean floor over kernels (those with a row).
func (b *bench) meanFloor(kernels []string) time.Duration {
	var sum time.Duration
	n := 0
	for _, k := range kernels {
		if f := b.floorOf(k); f > 0 {
			sum += f
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / time.Duration(n)
}

// renderWorkloads makes the workloads' table: wall time, boots, and both
// as ratios to the floor of the same bench (one floor boot = 1); then each
// suite's time per kernel and, where a suite publishes case_fixed_ms
// metrics (the skbstore suite: a case's time other than its traffic), their
// median against the floor.
func (b *bench) renderWorkloads(ws []*workload) string {
	if len(ws) == 0 {
		return ""
	}
	var s strings.Builder
	s.WriteString("\n## Workloads against the floor\n\n")
	s.WriteString("Real `vmtest run`s after their packages were compiled once; floor = the mean floor boot of their kernels above.\n")
	s.WriteString("wall/floor is how many floor boots the whole run costs; per package, what each package cost.\n\n")
	s.WriteString("| workload | kernels | packages | boots | wall | wall/floor | per package | per package/floor |\n|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, w := range ws {
		floor := b.meanFloor(w.kernels)
		if w.err != nil && w.rep == nil {
			fmt.Fprintf(&s, "| %s | %s | – | – | – | – | – | – |\n", w.name, strings.Join(w.kernels, ", "))
			continue
		}
		per := w.wall / time.Duration(max(w.pkgs, 1))
		fmt.Fprintf(&s, "| %s | %s | %d | %d | %.1fs | %s | %.2fs | %s |\n", w.name, strings.Join(w.kernels, ", "), w.pkgs, w.boots,
			w.wall.Seconds(), ratio(w.wall, floor), per.Seconds(), ratio(per, floor))
	}
	for _, w := range ws {
		if w.rep == nil || !w.suites {
			continue
		}
		fmt.Fprintf(&s, "\n### %s, per kernel\n\n| kernel | suite | guest time | /floor | case fixed cost (median) | /floor |\n|---|---|---:|---:|---:|---:|\n", w.name)
		for _, k := range w.rep.Kernels {
			floor := b.floorOf(k.Name)
			for _, st := range k.Suites {
				fixed := caseFixed(st.Metrics)
				fc, fr := "–", "–"
				if fixed > 0 {
					fc, fr = fmt.Sprintf("%.0f ms", fixed.Seconds()*1000), ratio(fixed, floor)
				}
				guest := time.Duration(st.GuestSeconds * float64(time.Second))
				fmt.Fprintf(&s, "| %s | %s | %.1fs | %s | %s | %s |\n", k.Name, st.Name, guest.Seconds(), ratio(guest, floor), fc, fr)
			}
		}
	}
	for _, w := range ws {
		if w.err != nil {
			fmt.Fprintf(&s, "\n%s failed: %s\n", w.name, strings.ReplaceAll(w.err.Error(), "\n", " "))
		}
	}
	return s.String()
}

// caseFixed is the median of a suite's *.case_fixed_ms metrics.
func caseFixed(m map[string]float64) time.Duration {
	var xs []float64
	for k, v := range m {
		if strings.HasSuffix(k, ".case_fixed_ms") || k == "case_fixed_ms" {
			xs = append(xs, v)
		}
	}
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	return time.Duration(xs[len(xs)/2] * float64(time.Millisecond))
}

func ratio(d, floor time.Duration) string {
	if floor <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", d.Seconds()/floor.Seconds())
}

// tailLines returns the last n lines of out, for an error message.
func tailLines(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
