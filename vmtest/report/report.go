// Package report gathers the results of a run over one or more kernels from
// its results directory and writes them as a JSON summary, JUnit XML (for CI
// test reporters) and a Markdown matrix (kernel x suite).
//
// A results directory holds one subdirectory per kernel with the go test
// event stream (events.json) and, per test package, the runner's result.json,
// logs and artifacts. Tests may leave figures for the matrix in
// $VMTEST_ARTIFACTS/metrics/*.json: each file is a flat JSON object of
// numbers, and its keys show up in the report as "<file>.<key>".
package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/skbstore/skbstore/vmtest"
	"github.com/skbstore/skbstore/vmtest/gotest"
)

// Report is the outcome of a run.
type Report struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Interrupted is set when the run was stopped before it finished: what
	// did not finish is marked "unfinished".
	Interrupted bool      `json:"interrupted,omitempty"`
	Kernels     []*Kernel `json:"kernels"`
}

// Kernel is the outcome of a run on one kernel.
type Kernel struct {
	Name     string    `json:"name"`
	Release  string    `json:"release,omitempty"`
	Source   string    `json:"source,omitempty"`
	Packages []string  `json:"packages,omitempty"` // "name version" of each Debian package
	Outcome  string    `json:"outcome"`            // pass, fail, unfinished
	Error    string    `json:"error,omitempty"`    // why the kernel could not run at all
	Duration float64   `json:"duration_seconds"`
	Dir      string    `json:"dir"` // relative to the results directory
	Suites   []*Suite  `json:"suites"`
	Counts   Counts    `json:"counts"`
	Started  time.Time `json:"-"`
}

// Suite is one test package on one kernel: one boot.
type Suite struct {
	Package string  `json:"package"`
	Name    string  `json:"name"`
	Outcome string  `json:"outcome"`
	Elapsed float64 `json:"elapsed_seconds"`
	Counts  Counts  `json:"counts"`
	Tests   []*Test `json:"tests"`
	// Output is what the package printed outside tests when it failed
	// (build errors, the runner's account of a guest failure).
	Output string `json:"output,omitempty"`

	// The runner's view of the boot, when it got that far.
	Accel       string  `json:"accel,omitempty"`
	BootSeconds float64 `json:"boot_seconds,omitempty"`
	// GuestSeconds is the guest's time for the package: its boot (none
	// for the later packages of a boot per kernel) and its run
	// (vmtest.Result.Duration).
	GuestSeconds float64            `json:"guest_seconds,omitempty"`
	Failure      *vmtest.Failure    `json:"failure,omitempty"`
	Splats       []vmtest.Splat     `json:"splats,omitempty"`
	Dir          string             `json:"dir,omitempty"` // relative to the results directory
	VerifierLogs []string           `json:"verifier_logs,omitempty"`
	Metrics      map[string]float64 `json:"metrics,omitempty"`
	// Faults are why the suite failed other than by a failed test: the
	// runner's faults and protocol errors, an unreadable artifact, every
	// test skipped.
	Faults []string `json:"faults,omitempty"`
}

// Options say how strict a report is.
type Options struct {
	// AllowSkip lets a package whose every test skipped pass. By default it
	// fails: a run where nothing was checked must not look green.
	AllowSkip bool
}

// fail marks the suite failed for why, counting it once if no test failed.
func (s *Suite) fail(why string) {
	s.Faults = append(s.Faults, why)
	if s.Counts.Failed+s.Counts.Unfinished == 0 && s.Outcome != gotest.Fail && s.Outcome != gotest.Unfinished {
		s.Counts.Failed++
	}
	if s.Outcome != gotest.Unfinished {
		s.Outcome = gotest.Fail
	}
}

// Test is one test's outcome.
type Test struct {
	Name    string  `json:"name"`
	Outcome string  `json:"outcome"`
	Elapsed float64 `json:"elapsed_seconds"`
	Output  string  `json:"output,omitempty"` // kept for tests that did not pass
}

// Counts tallies test outcomes.
type Counts struct {
	Passed     int `json:"passed"`
	Failed     int `json:"failed"`
	Skipped    int `json:"skipped"`
	Unfinished int `json:"unfinished"`
}

func (c *Counts) add(o Counts) {
	c.Passed += o.Passed
	c.Failed += o.Failed
	c.Skipped += o.Skipped
	c.Unfinished += o.Unfinished
}

// Total is the count of all tests and failed packages.
func (r *Report) Total() Counts {
	var c Counts
	for _, k := range r.Kernels {
		c.add(k.Counts)
	}
	return c
}

// Failed reports whether anything failed or did not finish.
func (r *Report) Failed() bool {
	t := r.Total()
	if t.Failed+t.Unfinished > 0 || r.Interrupted {
		return true
	}
	for _, k := range r.Kernels {
		if k.Outcome != gotest.Pass {
			return true
		}
	}
	return false
}

// KernelFromDir reads one kernel's results: dir/events.json and the
// per-package runner results below dir. root is the results directory that
// paths in the report are relative to. A damaged file of one package fails
// that package, not the report.
func KernelFromDir(root, dir string, k *Kernel, opts Options) error {
	rel, err := filepath.Rel(root, dir)
	if err != nil {
		return err
	}
	k.Dir = rel
	f, err := os.Open(filepath.Join(dir, "events.json"))
	if errors.Is(err, fs.ErrNotExist) {
		switch {
		case k.Error != "":
			// The kernel could not run at all: that is one failure.
			k.Outcome = gotest.Fail
			k.Counts.Failed = 1
		case k.Outcome == "":
			k.Outcome = gotest.Unfinished
		}
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	var rd gotest.Reader
	sum, err := rd.Read(f)
	if err != nil {
		return fmt.Errorf("read %s: %w", f.Name(), err)
	}
	runs := findRuns(dir)
	for _, p := range sum.Packages {
		s := &Suite{Package: p.Name, Name: gotest.ShortName(p.Name), Outcome: p.Outcome, Elapsed: p.Elapsed.Seconds()}
		outcomes := effectiveOutcomes(p.Tests)
		for _, t := range p.Tests {
			rt := &Test{Name: t.Name, Outcome: outcomes[t.Name], Elapsed: t.Elapsed.Seconds()}
			if t.Outcome != gotest.Pass && t.Outcome != gotest.Skip {
				rt.Output = t.Output
			}
			s.Tests = append(s.Tests, rt)
			switch rt.Outcome {
			case gotest.Pass:
				s.Counts.Passed++
			case gotest.Skip:
				s.Counts.Skipped++
			case gotest.Unfinished:
				s.Counts.Unfinished++
			default:
				s.Counts.Failed++
			}
		}
		if s.Outcome != gotest.Pass && s.Outcome != gotest.Skip {
			s.Output = p.Output
			if s.Counts.Failed+s.Counts.Unfinished == 0 {
				// A package that failed without a failed test (build
				// error, guest died before the first test) counts once.
				if s.Outcome == gotest.Unfinished {
					s.Counts.Unfinished++
				} else {
					s.Counts.Failed++
				}
			}
		}
		if run, ok := matchRun(runs, p.Name); ok {
			s.addRun(root, filepath.Join(dir, run))
		}
		if !opts.AllowSkip && s.Counts.Skipped > 0 && s.Counts.Passed+s.Counts.Failed+s.Counts.Unfinished == 0 {
			s.fail(fmt.Sprintf("every test of %s skipped (%d): nothing was checked; vmtest run -allow-skip accepts this", s.Name, s.Counts.Skipped))
		}
		k.Suites = append(k.Suites, s)
		k.Counts.add(s.Counts)
	}
	switch {
	case k.Error != "":
		k.Outcome = gotest.Fail
		if k.Counts.Failed+k.Counts.Unfinished == 0 {
			k.Counts.Failed = 1
		}
	case k.Outcome == gotest.Unfinished:
	case k.Counts.Failed > 0:
		k.Outcome = gotest.Fail
	case k.Counts.Unfinished > 0:
		k.Outcome = gotest.Unfinished
	case len(k.Suites) == 0:
		k.Outcome = gotest.Fail
		k.Error = "no test package ran"
	default:
		k.Outcome = gotest.Pass
	}
	return nil
}

// findRuns returns the directories below dir that hold a result.json,
// relative to dir.
func findRuns(dir string) []string {
	var runs []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == "artifacts" {
			return filepath.SkipDir
		}
		if !d.IsDir() && d.Name() == "result.json" {
			rel, _ := filepath.Rel(dir, filepath.Dir(p))
			runs = append(runs, rel)
		}
		return nil
	})
	sort.Strings(runs)
	return runs
}

// matchRun finds the run directory of a package: runs are named after the
// package's directory relative to where go test ran, so the longest one that
// is a suffix of the import path wins.
func matchRun(runs []string, pkg string) (string, bool) {
	best := ""
	for _, r := range runs {
		rs := filepath.ToSlash(r)
		if (pkg == rs || strings.HasSuffix(pkg, "/"+rs)) && len(rs) > len(best) {
			best = r
		}
	}
	return best, best != ""
}

func (s *Suite) hasFailedTest() bool {
	for _, t := range s.Tests {
		if t.Outcome == gotest.Fail {
			return true
		}
	}
	return false
}

// addRun adds the runner's view of the boot in dir.
func (s *Suite) addRun(root, dir string) {
	s.Dir, _ = filepath.Rel(root, dir)
	b, err := os.ReadFile(filepath.Join(dir, "result.json"))
	if err != nil {
		s.fail(fmt.Sprintf("runner result: %v", err))
		return
	}
	var res vmtest.Result
	if err := json.Unmarshal(b, &res); err != nil {
		s.fail(fmt.Sprintf("runner result %s: %v", filepath.Join(s.Dir, "result.json"), err))
		return
	}
	s.Accel = res.Accel.Name
	s.BootSeconds = res.Boot.Seconds()
	s.GuestSeconds = res.Duration.Seconds()
	s.Failure = res.Failure
	if f := res.Failure; f != nil && f.Kind == vmtest.FailCancelled && s.Outcome == gotest.Fail && !s.hasFailedTest() {
		// The run was stopped before the package got to a verdict (go test
		// saw vmtest exec exit 1): unfinished, not failed.
		s.Outcome = gotest.Unfinished
		s.Counts.Unfinished += s.Counts.Failed
		s.Counts.Failed = 0
	}
	s.Splats = res.Splats
	for _, f := range res.Faults {
		s.fail(f)
	}
	if len(res.ProtocolErrors) > 0 {
		s.fail("result port: " + res.ProtocolErrors[0])
	}
	for _, f := range res.Files {
		// Names came from the guest through result.json: keep to the
		// artifacts directory whatever they say.
		if !filepath.IsLocal(f) {
			s.fail(fmt.Sprintf("artifact with bad name %q", f))
			continue
		}
		path := filepath.Join(dir, "artifacts", f)
		rel, _ := filepath.Rel(root, path)
		parts := strings.Split(filepath.ToSlash(f), "/")
		switch {
		case strings.Contains(f, "verifier"):
			s.VerifierLogs = append(s.VerifierLogs, rel)
		case len(parts) == 3 && parts[1] == "metrics" && strings.HasSuffix(parts[2], ".json"):
			if err := s.addMetrics(path, strings.TrimSuffix(parts[2], ".json")); err != nil {
				s.fail(fmt.Sprintf("metrics %s: %v", rel, err))
			}
		}
	}
}

// maxMetricsFile bounds a metrics file read into the report.
const maxMetricsFile = 1 << 20

// addMetrics reads a flat JSON object; values that are not numbers are
// ignored, so tests can keep notes next to their figures.
func (s *Suite) addMetrics(path, prefix string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxMetricsFile+1))
	if err != nil {
		return err
	}
	if len(b) > maxMetricsFile {
		return fmt.Errorf("larger than %d bytes", maxMetricsFile)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("not a JSON object of numbers: %w", err)
	}
	if s.Metrics == nil {
		s.Metrics = map[string]float64{}
	}
	for k, v := range m {
		if f, ok := v.(float64); ok {
			s.Metrics[prefix+"."+k] = f
		}
	}
	return nil
}

// Write writes report.json, junit.xml and summary.md into dir.
func (r *Report) Write(dir string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "junit.xml"), r.JUnit); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, "summary.md"), r.Markdown)
}

// effectiveOutcomes maps each test to its outcome, except that a test that
// passed while every one of its subtests skipped counts as skipped: go test
// passes such a parent, but nothing was checked under it, and a package of
// such tests must not pass as if something had been.
func effectiveOutcomes(tests []*gotest.Test) map[string]string {
	out := make(map[string]string, len(tests))
	children := map[string][]string{}
	for _, t := range tests {
		out[t.Name] = t.Outcome
		if i := strings.LastIndexByte(t.Name, '/'); i > 0 {
			children[t.Name[:i]] = append(children[t.Name[:i]], t.Name)
		}
	}
	// Deepest first, so a parent sees its children's effective outcomes.
	names := make([]string, 0, len(tests))
	for _, t := range tests {
		names = append(names, t.Name)
	}
	sort.SliceStable(names, func(i, j int) bool { return strings.Count(names[i], "/") > strings.Count(names[j], "/") })
	for _, n := range names {
		kids := children[n]
		if out[n] != gotest.Pass || len(kids) == 0 {
			continue
		}
		allSkipped := true
		for _, k := range kids {
			allSkipped = allSkipped && out[k] == gotest.Skip
		}
		if allSkipped {
			out[n] = gotest.Skip
		}
	}
	return out
}
