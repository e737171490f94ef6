package report

import (
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/skbstore/skbstore/vmtest/gotest"
)

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Skipped    int             `xml:"skipped,attr"`
	Time       string          `xml:"time,attr"`
	Properties []junitProperty `xml:"properties>property,omitempty"`
	Cases      []junitCase     `xml:"testcase"`
	SystemOut  string          `xml:"system-out,omitempty"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Body    string `xml:",chardata"`
}

// JUnit writes the report as JUnit XML: a testsuite per kernel and package,
// named "<kernel>/<package>". A package that failed without a failing test
// (the guest died, the build failed) gets a testcase of its own, so CI test
// reporters show it.
func (r *Report) JUnit(w io.Writer) error {
	var out junitSuites
	for _, k := range r.Kernels {
		if k.Error != "" && len(k.Suites) == 0 {
			js := junitSuite{Name: k.Name, Tests: 1, Failures: 1, Time: "0"}
			js.Cases = append(js.Cases, junitCase{Name: "kernel " + k.Name, Classname: k.Name, Time: "0",
				Failure: &junitMessage{Message: k.Error, Body: k.Error}})
			out.Suites = append(out.Suites, js)
			continue
		}
		for _, s := range k.Suites {
			js := junitSuite{Name: k.Name + "/" + s.Package, Time: secs(s.Elapsed)}
			js.Properties = append(js.Properties, junitProperty{"kernel", k.Name}, junitProperty{"release", k.Release})
			if s.Accel != "" {
				js.Properties = append(js.Properties, junitProperty{"accel", s.Accel})
			}
			for _, t := range s.Tests {
				jc := junitCase{Name: t.Name, Classname: k.Name + "/" + s.Package, Time: secs(t.Elapsed)}
				switch t.Outcome {
				case gotest.Pass:
				case gotest.Skip:
					jc.Skipped = &junitMessage{Message: "skipped"}
					js.Skipped++
				default:
					jc.Failure = &junitMessage{Message: t.Outcome, Body: t.Output}
					js.Failures++
				}
				js.Cases = append(js.Cases, jc)
			}
			if msg := s.problem(); msg != "" && (js.Failures == 0 || s.Failure != nil || len(s.Splats) > 0) {
				js.Cases = append(js.Cases, junitCase{Name: "guest", Classname: k.Name + "/" + s.Package, Time: "0",
					Failure: &junitMessage{Message: msg, Body: s.Output}})
				js.Failures++
			}
			js.Tests = len(js.Cases)
			out.Suites = append(out.Suites, js)
		}
	}
	for _, s := range out.Suites {
		out.Tests += s.Tests
		out.Failures += s.Failures
		out.Skipped += s.Skipped
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

// problem says what went wrong with the suite's boot or package, "" if
// nothing did beyond failing tests.
func (s *Suite) problem() string {
	var p []string
	if s.Failure != nil {
		p = append(p, s.Failure.Error())
	}
	for _, sp := range s.Splats {
		p = append(p, "kernel "+sp.Kind+": "+sp.Line)
	}
	p = append(p, s.Faults...)
	if len(p) == 0 && s.Outcome != gotest.Pass && s.Outcome != gotest.Skip && s.Counts.Failed+s.Counts.Unfinished > 0 {
		failedTests := 0
		for _, t := range s.Tests {
			if t.Outcome != gotest.Pass && t.Outcome != gotest.Skip {
				failedTests++
			}
		}
		if failedTests == 0 {
			p = append(p, "package "+s.Outcome)
		}
	}
	return strings.Join(p, "; ")
}

func secs(f float64) string { return fmt.Sprintf("%.3f", f) }

func writeFile(path string, fn func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := fn(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
