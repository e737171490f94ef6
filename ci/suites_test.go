package ci

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/skbstore/skbstore/vmtest/report"
)

// TestSuitesInGuests runs the skb storage suites the way `make vmtest` does:
// in real guest kernels under QEMU, through the vmtest binary, and checks
// what comes back.

// guestKernels are the kernels CI runs the suites on; `make vmtest-matrix`
// runs them on all.
var guestKernels = []string{"6.1", "6.12", "6.12/arm64"}

func TestSuitesInGuests(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real kernels under QEMU; skipped with -short")
	}
	bin := buildRunner(t)

	results := t.TempDir()
	cmd := exec.Command(bin, "run", "-kernel", strings.Join(guestKernels, ","), "-cpus", "2", "-modules", "veth",
		"-results", results, "--", "go", "test", "./suites/skbstore", "./suites/tagflow")
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	require.NoError(t, err, "the suites must pass in every guest")

	dir, rep := readReport(t, results)
	require.Len(t, rep.Kernels, len(guestKernels))
	for _, k := range rep.Kernels {
		assert.Equal(t, "pass", k.Outcome, "kernel %s", k.Name)
		require.Len(t, k.Suites, 2, "kernel %s", k.Name)
		var s, tf *report.Suite
		for _, x := range k.Suites {
			switch {
			case strings.HasSuffix(x.Package, "/skbstore"):
				s = x
			case strings.HasSuffix(x.Package, "/tagflow"):
				tf = x
			}
		}
		require.NotNil(t, s, "kernel %s: no skbstore suite", k.Name)
		require.NotNil(t, tf, "kernel %s: no tagflow suite", k.Name)
		// Tags written at tc ingress reach the socket of a plain UDP flow,
		// and the figures of every case are in the report.
		assert.Positive(t, tf.Metrics["tagflow.udp.cgroup_skb_ingress.delivered"], "kernel %s: %v", k.Name, tf.Metrics)
		assert.Contains(t, tf.Metrics, "tagflow.forward.af_packet_tap.lost", "kernel %s", k.Name)
		assert.Contains(t, tf.Metrics, "tagflow.udp-fragments.udp_receive_queue.lost", "kernel %s", k.Name)
		assert.Empty(t, s.Splats, "kernel %s", k.Name)
		assert.Positive(t, s.Counts.Passed, "kernel %s", k.Name)
		assert.NotEmpty(t, s.VerifierLogs, "kernel %s: verifier logs are kept", k.Name)
		for _, l := range s.VerifierLogs {
			st, err := os.Stat(filepath.Join(dir, l))
			if assert.NoError(t, err) {
				assert.Positive(t, st.Size(), l)
			}
		}
		// Both strategies were measured, and the complete one leaks nothing.
		var tracepoints, complete int
		for key, v := range s.Metrics {
			switch {
			case strings.Contains(key, ".tracepoints-") && strings.HasSuffix(key, ".leaks"):
				tracepoints++
			case strings.Contains(key, ".complete-") && strings.HasSuffix(key, ".leaks"):
				complete++
				assert.Zero(t, v, "kernel %s: %s", k.Name, key)
			}
		}
		assert.Positive(t, tracepoints, "kernel %s: no leak figures for the tracepoints strategy", k.Name)
		assert.Positive(t, complete, "kernel %s: no leak figures for the complete strategy", k.Name)
	}
	md, err := os.ReadFile(filepath.Join(dir, "summary.md"))
	require.NoError(t, err)
	assert.Contains(t, string(md), "skbstore: measurements")
}

// TestSuitesSkipWithoutTrampolines runs the suites on an arm64 kernel that
// cannot attach fentry/fexit programs to kernel functions (6.1: arm64 has
// BPF trampolines for them from 6.4): every case must skip with that
// reason, the run must fail because nothing was checked (go test passes a
// parent whose subtests all skipped; the report must not), and pass only
// with -allow-skip.
func TestSuitesSkipWithoutTrampolines(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a real arm64 kernel under QEMU; skipped with -short")
	}
	bin := buildRunner(t)

	for _, allow := range []bool{false, true} {
		results := t.TempDir()
		args := []string{"run", "-kernel", "6.1", "-arch", "arm64", "-results", results}
		if allow {
			args = append(args, "-allow-skip")
		}
		args = append(args, "--", "go", "test", "./suites/skbstore", "./suites/tagflow", "-run", "^(TestLifecycle|TestUDP)$/.*/^AllocConsume$")
		cmd := exec.Command(bin, args...)
		cmd.Dir = ".."
		out, err := cmd.CombinedOutput()
		t.Logf("%s", out)
		if allow {
			require.NoError(t, err, "-allow-skip accepts a run where everything skipped")
		} else {
			require.Error(t, err, "a run that checked nothing fails")
		}
		dir, rep := readReport(t, results)
		require.Len(t, rep.Kernels, 1)
		k := rep.Kernels[0]
		assert.Equal(t, "6.1/arm64", k.Name)
		assert.Contains(t, k.Release, "arm64")
		assert.Zero(t, k.Counts.Passed, "nothing was checked, so nothing passed")
		assert.Positive(t, k.Counts.Skipped)
		require.Len(t, k.Suites, 2)
		for _, s := range k.Suites {
			if allow {
				assert.Equal(t, "pass", s.Outcome, s.Name)
			} else {
				assert.Equal(t, "fail", s.Outcome, s.Name)
				assert.Contains(t, strings.Join(s.Faults, "\n"), "nothing was checked", s.Name)
			}
			o, err := os.ReadFile(filepath.Join(dir, s.Dir, s.Name+".out"))
			require.NoError(t, err)
			assert.Contains(t, string(o), "no BPF trampoline", "%s: the skip says why", s.Name)
		}
	}
}

// buildRunner builds the vmtest binary the way the Makefile does.
func buildRunner(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "vmtest")
	build := exec.Command("go", "build", "-o", bin, "../vmtest/cmd/vmtest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

// readReport reads the newest run's report under results, and returns the
// run's directory with it.
func readReport(t *testing.T, results string) (string, *report.Report) {
	t.Helper()
	dir, err := filepath.EvalSymlinks(filepath.Join(results, "latest"))
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	require.NoError(t, err)
	var rep report.Report
	require.NoError(t, json.Unmarshal(b, &rep))
	return dir, &rep
}
