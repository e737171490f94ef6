package report

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/skbstore/skbstore/vmtest"
)

// writeRun lays out one kernel's results the way vmtest run does.
func writeRun(t *testing.T, root, kernel string, events []string, res *vmtest.Result, files map[string]string) {
	t.Helper()
	kdir := filepath.Join(root, kernel)
	pdir := filepath.Join(kdir, "suites", "demo")
	require.NoError(t, os.MkdirAll(pdir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(kdir, "events.json"), []byte(strings.Join(events, "\n")+"\n"), 0o644))
	for name, content := range files {
		p := filepath.Join(pdir, "artifacts", name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
		res.Files = append(res.Files, name)
	}
	res.OutDir = pdir
	b, err := json.Marshal(res)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(pdir, "result.json"), b, 0o644))
}

func ev(action, test string, extra ...string) string {
	out := ""
	if len(extra) > 0 {
		out = extra[0]
	}
	b, _ := json.Marshal(map[string]any{"Action": action, "Package": "example.com/m/suites/demo", "Test": test, "Output": out, "Elapsed": 0.5})
	return string(b)
}

func TestReportFromResults(t *testing.T) {
	root := t.TempDir()
	writeRun(t, root, "6.1", []string{
		ev("run", "TestA"), ev("pass", "TestA"),
		ev("run", "TestB"), ev("output", "TestB", "    demo_test.go:9: broken\n"), ev("fail", "TestB"),
		ev("run", "TestC"), ev("skip", "TestC"),
		ev("fail", ""),
	}, &vmtest.Result{Accel: vmtest.AccelChoice{Name: "tcg"}, Boot: 2 * time.Second}, map[string]string{
		"demo/metrics/demo.json":               `{"udp.tracepoints.leaks": 12, "udp.complete.leaks": 0, "note": "text is ignored"}`,
		"demo/verifier/tracepoints-hash/p.log": "processed 10 insns",
		"demo/other.txt":                       "x",
	})
	writeRun(t, root, "6.12", []string{
		ev("run", "TestA"), ev("output", "TestA", "vmtest: guest 6.12 failed\n"),
		ev("fail", ""),
	}, &vmtest.Result{
		Accel:   vmtest.AccelChoice{Name: "tcg"},
		Failure: &vmtest.Failure{Kind: vmtest.FailPanic, Message: "Kernel panic - not syncing: oops"},
		Splats:  []vmtest.Splat{{Kind: "oops", Line: "Oops: 0000 [#1] SMP"}},
	}, nil)

	rep := &Report{}
	for _, k := range []string{"6.1", "6.12", "5.10"} {
		kr := &Kernel{Name: k}
		if k == "5.10" {
			kr.Error = "fetch failed"
		}
		rep.Kernels = append(rep.Kernels, kr)
		require.NoError(t, KernelFromDir(root, filepath.Join(root, k), kr, Options{}))
	}
	k61, k612, k510 := rep.Kernels[0], rep.Kernels[1], rep.Kernels[2]

	assert.Equal(t, "fail", k61.Outcome)
	assert.Equal(t, Counts{Passed: 1, Failed: 1, Skipped: 1}, k61.Counts)
	require.Len(t, k61.Suites, 1)
	s := k61.Suites[0]
	assert.Equal(t, "demo", s.Name)
	assert.Equal(t, "tcg", s.Accel)
	assert.Equal(t, 2.0, s.BootSeconds)
	assert.Equal(t, map[string]float64{"demo.udp.tracepoints.leaks": 12, "demo.udp.complete.leaks": 0}, s.Metrics)
	assert.Equal(t, []string{filepath.Join("6.1", "suites", "demo", "artifacts", "demo", "verifier", "tracepoints-hash", "p.log")}, s.VerifierLogs)
	assert.Contains(t, s.Tests[1].Output, "broken")

	// A guest that died mid-test: the test is unfinished, the boot failed.
	assert.Equal(t, "unfinished", k612.Outcome)
	assert.Equal(t, Counts{Unfinished: 1}, k612.Counts)
	require.NotNil(t, k612.Suites[0].Failure)

	assert.Equal(t, "fail", k510.Outcome)
	assert.Equal(t, Counts{Failed: 1}, k510.Counts)
	assert.True(t, rep.Failed())

	var md bytes.Buffer
	require.NoError(t, rep.Markdown(&md))
	out := md.String()
	assert.Contains(t, out, "| suite | 6.1 | 6.12 | 5.10 |")
	assert.Contains(t, out, "| demo | **FAIL**, 1/2, 1 skipped | **kernel panic**, 0/1, 1 splat(s) | – |")
	assert.Contains(t, out, "| demo.udp.tracepoints.leaks | 12 | – | – |")
	assert.NotContains(t, out, "demo.udp.complete.leaks |", "rows that are 0 everywhere are left out")
	assert.Contains(t, out, "1 of 2 metrics are 0 on every kernel")
	assert.Contains(t, out, "**5.10**: fetch failed")

	var j bytes.Buffer
	require.NoError(t, rep.JUnit(&j))
	var doc struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Skipped  int `xml:"skipped,attr"`
	}
	require.NoError(t, xml.Unmarshal(j.Bytes(), &doc))
	// 6.1: A, B (failed), C (skipped); 6.12: A (unfinished), guest (panic); 5.10: the kernel.
	assert.Equal(t, 6, doc.Tests)
	assert.Equal(t, 4, doc.Failures)
	assert.Equal(t, 1, doc.Skipped)

	dir := t.TempDir()
	require.NoError(t, rep.Write(dir))
	for _, f := range []string{"report.json", "junit.xml", "summary.md"} {
		assert.FileExists(t, filepath.Join(dir, f))
	}
}

// TestBadArtifactFailsOnlyItsSuite: a metrics file that is not JSON fails the
// suite that wrote it, and the kernel's report keeps everything else.
func TestBadArtifactFailsOnlyItsSuite(t *testing.T) {
	root := t.TempDir()
	writeRun(t, root, "6.1", []string{ev("run", "TestA"), ev("pass", "TestA"), ev("pass", "")},
		&vmtest.Result{Accel: vmtest.AccelChoice{Name: "tcg"}}, map[string]string{
			"demo/metrics/bad.json":  `{"leaks": 1,`,
			"demo/metrics/good.json": `{"leaks": 2}`,
		})
	k := &Kernel{Name: "6.1"}
	require.NoError(t, KernelFromDir(root, filepath.Join(root, "6.1"), k, Options{}))
	require.Len(t, k.Suites, 1)
	s := k.Suites[0]
	assert.Equal(t, "fail", s.Outcome)
	assert.Equal(t, "fail", k.Outcome)
	assert.Equal(t, Counts{Passed: 1, Failed: 1}, k.Counts)
	require.Len(t, s.Faults, 1)
	assert.Contains(t, s.Faults[0], "bad.json")
	assert.Equal(t, map[string]float64{"good.leaks": 2}, s.Metrics)
}

func TestEverySkippedFailsUnlessAllowed(t *testing.T) {
	root := t.TempDir()
	writeRun(t, root, "6.1", []string{ev("run", "TestA"), ev("skip", "TestA"), ev("run", "TestB"), ev("skip", "TestB"), ev("pass", "")},
		&vmtest.Result{Accel: vmtest.AccelChoice{Name: "tcg"}}, nil)
	for _, allow := range []bool{false, true} {
		k := &Kernel{Name: "6.1"}
		require.NoError(t, KernelFromDir(root, filepath.Join(root, "6.1"), k, Options{AllowSkip: allow}))
		if allow {
			assert.Equal(t, "pass", k.Outcome)
			assert.Equal(t, Counts{Skipped: 2}, k.Counts)
			continue
		}
		assert.Equal(t, "fail", k.Outcome)
		assert.Equal(t, Counts{Failed: 1, Skipped: 2}, k.Counts)
		require.Len(t, k.Suites[0].Faults, 1)
		assert.Contains(t, k.Suites[0].Faults[0], "-allow-skip")
	}
}

// TestParentOfSkippedSubtestsIsSkipped: go test passes a test whose every
// subtest skipped (a suite on a kernel that cannot attach its programs);
// that checked nothing, so it counts as skipped and a package of such tests
// fails unless skips are allowed. One passed subtest makes the parent pass.
func TestParentOfSkippedSubtestsIsSkipped(t *testing.T) {
	for _, tc := range []struct {
		name   string
		events []string
		want   Counts
		result string
	}{
		{"all subtests skipped", []string{ev("run", "TestA"), ev("run", "TestA/x"), ev("skip", "TestA/x"), ev("run", "TestA/y"), ev("skip", "TestA/y"),
			ev("pass", "TestA"), ev("pass", "")}, Counts{Failed: 1, Skipped: 3}, "fail"},
		{"nested, all skipped", []string{ev("run", "TestA"), ev("run", "TestA/x"), ev("run", "TestA/x/1"), ev("skip", "TestA/x/1"), ev("pass", "TestA/x"),
			ev("pass", "TestA"), ev("pass", "")}, Counts{Failed: 1, Skipped: 3}, "fail"},
		{"one subtest passed", []string{ev("run", "TestA"), ev("run", "TestA/x"), ev("skip", "TestA/x"), ev("run", "TestA/y"), ev("pass", "TestA/y"),
			ev("pass", "TestA"), ev("pass", "")}, Counts{Passed: 2, Skipped: 1}, "pass"},
		{"a leaf test passed beside", []string{ev("run", "TestA"), ev("run", "TestA/x"), ev("skip", "TestA/x"), ev("pass", "TestA"),
			ev("run", "TestB"), ev("pass", "TestB"), ev("pass", "")}, Counts{Passed: 1, Skipped: 2}, "pass"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeRun(t, root, "6.1", tc.events, &vmtest.Result{Accel: vmtest.AccelChoice{Name: "tcg"}}, nil)
			k := &Kernel{Name: "6.1"}
			require.NoError(t, KernelFromDir(root, filepath.Join(root, "6.1"), k, Options{}))
			assert.Equal(t, tc.want, k.Counts)
			assert.Equal(t, tc.result, k.Outcome)
		})
	}
}

func TestRunnerFaultsFailTheSuite(t *testing.T) {
	root := t.TempDir()
	writeRun(t, root, "6.1", []string{ev("run", "TestA"), ev("pass", "TestA"), ev("pass", "")},
		&vmtest.Result{Faults: []string{"load module veth.ko: finit_module: exec format error"}, ProtocolErrors: []string{"forged"}}, nil)
	k := &Kernel{Name: "6.1"}
	require.NoError(t, KernelFromDir(root, filepath.Join(root, "6.1"), k, Options{}))
	assert.Equal(t, "fail", k.Outcome)
	assert.Len(t, k.Suites[0].Faults, 2)
}

// TestCancelledBeforeAnyTestIsUnfinished: a package whose guest was stopped
// by Ctrl-C before any test ran did not fail; it did not finish.
func TestCancelledBeforeAnyTestIsUnfinished(t *testing.T) {
	root := t.TempDir()
	writeRun(t, root, "6.12", []string{ev("output", "", "vmtest: guest 6.12 failed: cancelled\n"), ev("fail", "")},
		&vmtest.Result{Failure: &vmtest.Failure{Kind: vmtest.FailCancelled, Message: "run stopped before the guest finished"}}, nil)
	k := &Kernel{Name: "6.12"}
	require.NoError(t, KernelFromDir(root, filepath.Join(root, "6.12"), k, Options{}))
	assert.Equal(t, "unfinished", k.Outcome)
	assert.Equal(t, Counts{Unfinished: 1}, k.Counts)
}
