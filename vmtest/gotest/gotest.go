// Package gotest reads the event stream of `go test -json` and turns it into
// per-test results: what a person reads at the end of a run and what reports
// are made from.
package gotest

import (
	"bufio"
	"encoding/json"
	"io"
	"sort"
	"strings"
	"time"
)

// Event is one line of `go test -json` (see `go doc test2json`).
type Event struct {
	Time    time.Time `json:",omitempty"`
	Action  string
	Package string  `json:",omitempty"`
	Test    string  `json:",omitempty"`
	Elapsed float64 `json:",omitempty"`
	Output  string  `json:",omitempty"`
	// ImportPath names the package a build event is about (go 1.24 and
	// later report build output this way, without Package).
	ImportPath string `json:",omitempty"`
	// FailedBuild, on a package's fail event, names the package whose
	// build failed.
	FailedBuild string `json:",omitempty"`
}

// Outcomes of a test or package.
const (
	Pass = "pass"
	Fail = "fail"
	Skip = "skip"
	// Unfinished is a test that started but never reported an outcome,
	// because its guest died or the run was stopped.
	Unfinished = "unfinished"
)

// Test is the result of one test (or subtest).
type Test struct {
	Package string
	Name    string
	Outcome string
	Elapsed time.Duration
	// Output is what the test printed.
	Output string
}

// Package is the result of one test package.
type Package struct {
	Name    string
	Outcome string
	Elapsed time.Duration
	// Output is what was printed outside any test: build errors, the
	// runner's messages about the guest, the final ok/FAIL line.
	Output string
	Tests  []*Test
}

// Summary is the result of a whole `go test -json` stream.
type Summary struct {
	Packages []*Package
}

// Counts returns how many tests passed, failed and were skipped. A test that
// never finished counts as failed, and so does a failed package that has no
// failed test (a build error or a guest that died before any test ran).
func (s *Summary) Counts() (passed, failed, skipped int) {
	for _, p := range s.Packages {
		pkgFailed := 0
		for _, t := range p.Tests {
			switch t.Outcome {
			case Pass:
				passed++
			case Skip:
				skipped++
			default:
				failed++
				pkgFailed++
			}
		}
		if p.Outcome != Pass && p.Outcome != Skip && pkgFailed == 0 {
			failed++
		}
	}
	return
}

// Failed reports whether anything failed.
func (s *Summary) Failed() bool {
	_, f, _ := s.Counts()
	return f > 0
}

// Reader builds a Summary from events, optionally reporting each finished
// test as it arrives.
type Reader struct {
	// OnTest, if set, is called when a test finishes.
	OnTest func(*Test)
	// OnPackage, if set, is called when a package finishes.
	OnPackage func(*Package)
	// Raw, if set, receives every input line unchanged.
	Raw io.Writer

	pkgs  map[string]*Package
	tests map[string]*Test
	order []string
	// build holds build output by import path until a package's fail
	// event names it.
	build map[string]string
}

// Read consumes a `go test -json` stream until EOF. Lines that are not JSON
// events (go test prints build failures as plain text) are kept as package
// output of a pseudo-package named "".
func (r *Reader) Read(in io.Reader) (*Summary, error) {
	r.pkgs = map[string]*Package{}
	r.tests = map[string]*Test{}
	r.build = map[string]string{}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	var raw []byte
	for sc.Scan() {
		line := sc.Bytes()
		if r.Raw != nil {
			// One Write per line, so that streams of several readers
			// sharing a writer interleave by whole lines.
			raw = append(append(raw[:0], line...), '\n')
			r.Raw.Write(raw)
		}
		var e Event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			p := r.pkg("")
			p.Output += string(line) + "\n"
			p.Outcome = Fail
			continue
		}
		r.add(e)
	}
	return r.summary(), sc.Err()
}

func (r *Reader) pkg(name string) *Package {
	p, ok := r.pkgs[name]
	if !ok {
		p = &Package{Name: name}
		r.pkgs[name] = p
		r.order = append(r.order, name)
	}
	return p
}

func (r *Reader) add(e Event) {
	if e.Package == "" && e.ImportPath != "" {
		// A build event: its output belongs to the packages whose fail
		// event names this build, and counts once with each of them.
		if e.Action == "build-output" && len(r.build[e.ImportPath]) < 1<<20 {
			r.build[e.ImportPath] += e.Output
		}
		return
	}
	p := r.pkg(e.Package)
	if e.Test == "" && e.Action == Fail && e.FailedBuild != "" {
		p.Output = r.build[e.FailedBuild] + p.Output
	}
	if e.Test == "" {
		switch e.Action {
		case "output", "build-output":
			p.Output += e.Output
		case Pass, Fail, Skip:
			p.Outcome = e.Action
			p.Elapsed = seconds(e.Elapsed)
			if r.OnPackage != nil {
				r.OnPackage(p)
			}
		case "build-fail":
			p.Outcome = Fail
		}
		return
	}
	key := e.Package + "\x00" + e.Test
	t, ok := r.tests[key]
	if !ok {
		t = &Test{Package: e.Package, Name: e.Test}
		r.tests[key] = t
		p.Tests = append(p.Tests, t)
	}
	switch e.Action {
	case "output":
		t.Output += e.Output
	case Pass, Fail, Skip:
		t.Outcome = e.Action
		t.Elapsed = seconds(e.Elapsed)
		if r.OnTest != nil {
			r.OnTest(t)
		}
	}
}

func (r *Reader) summary() *Summary {
	s := &Summary{}
	for _, name := range r.order {
		p := r.pkgs[name]
		for _, t := range p.Tests {
			if t.Outcome == "" {
				t.Outcome = Unfinished
			}
		}
		if p.Outcome == "" {
			p.Outcome = Unfinished
		}
		if name == "" && len(p.Tests) == 0 && strings.TrimSpace(p.Output) == "" {
			continue
		}
		s.Packages = append(s.Packages, p)
	}
	sort.SliceStable(s.Packages, func(i, j int) bool { return s.Packages[i].Name < s.Packages[j].Name })
	return s
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// ShortName is the last element of an import path: how suites are named.
func ShortName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// Indent indents every line of s by four spaces.
func Indent(s string) string {
	if s == "" {
		return ""
	}
	var b strings.Builder
	for _, l := range strings.SplitAfter(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    ")
		b.WriteString(strings.TrimRight(l, "\n"))
		b.WriteString("\n")
	}
	return b.String()
}
