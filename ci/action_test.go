package ci

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v4"
)

// actionFile is the part of action.yml the test reads.
type actionFile struct {
	Inputs map[string]struct {
		Default string `yaml:"default"`
	} `yaml:"inputs"`
	Runs struct {
		Using string `yaml:"using"`
		Steps []struct {
			Name  string            `yaml:"name"`
			ID    string            `yaml:"id"`
			If    string            `yaml:"if"`
			Uses  string            `yaml:"uses"`
			Shell string            `yaml:"shell"`
			Run   string            `yaml:"run"`
			Env   map[string]string `yaml:"env"`
		} `yaml:"steps"`
	} `yaml:"runs"`
}

// runAction runs the action's shell steps here as a runner would, with the
// given inputs (the rest take their defaults) from dir, and returns the
// exit status of the step that stopped it (0: all ran), the step summary
// and the action's outputs. The uses: steps (cache, upload) are GitHub's.
func runAction(t *testing.T, dir string, inputs map[string]string) (code int, summary string, outputs map[string]string) {
	t.Helper()
	b, err := os.ReadFile("../action.yml")
	require.NoError(t, err)
	var a actionFile
	require.NoError(t, yaml.Unmarshal(b, &a))
	require.Equal(t, "composite", a.Runs.Using)
	for k := range inputs {
		require.Contains(t, a.Inputs, k, "action.yml has no input %q", k)
	}
	tmp := t.TempDir()
	files := map[string]string{}
	for _, f := range []string{"GITHUB_PATH", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"} {
		files[f] = filepath.Join(tmp, f)
		require.NoError(t, os.WriteFile(files[f], nil, 0o644))
	}
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	expr := regexp.MustCompile(`\$\{\{\s*([^}]*?)\s*\}\}`)
	eval := func(s string) string {
		return expr.ReplaceAllStringFunc(s, func(m string) string {
			e := expr.FindStringSubmatch(m)[1]
			switch {
			case strings.HasPrefix(e, "inputs."):
				name := strings.TrimPrefix(e, "inputs.")
				if v, ok := inputs[name]; ok {
					return v
				}
				in, ok := a.Inputs[name]
				require.True(t, ok, "no input %s", name)
				return in.Default
			case e == "runner.temp":
				return tmp
			case e == "github.action_path":
				return root
			}
			t.Fatalf("expression %q: the test does not know it", e)
			return ""
		})
	}
	path := os.Getenv("PATH")
	outputs = map[string]string{}
	for _, st := range a.Runs.Steps {
		if st.Uses != "" {
			continue
		}
		require.Equal(t, "bash", st.Shell, "step %q", st.Name)
		cmd := exec.Command("bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", eval(st.Run))
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "PATH="+path, "GITHUB_ACTION_PATH="+root, "RUNNER_TEMP="+tmp, "CI=true")
		for f, p := range files {
			cmd.Env = append(cmd.Env, f+"="+p)
		}
		for k, v := range st.Env {
			cmd.Env = append(cmd.Env, k+"="+eval(v))
		}
		require.NoError(t, os.Truncate(files["GITHUB_OUTPUT"], 0))
		out, err := cmd.CombinedOutput()
		t.Logf("step %q:\n%s", st.Name, out)
		if st.ID != "" {
			for _, line := range readLines(t, files["GITHUB_OUTPUT"]) {
				if k, v, ok := strings.Cut(line, "="); ok {
					outputs[k] = v
				}
			}
		}
		for _, p := range readLines(t, files["GITHUB_PATH"]) {
			path = p + ":" + path
		}
		require.NoError(t, os.Truncate(files["GITHUB_PATH"], 0))
		if err != nil {
			ee, ok := err.(*exec.ExitError)
			require.True(t, ok, "step %q: %v", st.Name, err)
			s, _ := os.ReadFile(files["GITHUB_STEP_SUMMARY"])
			return ee.ExitCode(), string(s), outputs
		}
	}
	s, _ := os.ReadFile(files["GITHUB_STEP_SUMMARY"])
	return 0, string(s), outputs
}

func readLines(t *testing.T, path string) []string {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestActionOnFixture runs the GitHub Action's steps on a fixture module,
// as another project would use it: its tests pass in a 6.1 guest, the step
// summary and results are written; a failing test fails the job.
func TestActionOnFixture(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a kernel under QEMU; skipped with -short")
	}
	fixture := t.TempDir() // outside this repository's go.work
	require.NoError(t, os.CopyFS(fixture, os.DirFS("testdata/fixture")))

	code, summary, outputs := runAction(t, fixture, map[string]string{"kernel": "6.1", "go-test": "./... -v"})
	require.Equal(t, 0, code, "the action failed on a passing module")
	assert.Contains(t, summary, "2 passed")
	require.NotEmpty(t, outputs["results"])
	assert.Equal(t, "vmtest-results-job-6.1", outputs["artifact"])
	junit, _ := filepath.Glob(filepath.Join(outputs["results"], "2*", "junit.xml"))
	assert.Len(t, junit, 1, "the results hold the run's JUnit report")

	code, summary, _ = runAction(t, fixture, map[string]string{"kernel": "6.1", "go-test": "./... -args -fail"})
	assert.Equal(t, 1, code, "a failed test fails the job")
	assert.Contains(t, summary, "1 failed")

	// The arch input: the same module in an arm64 guest, emulated.
	code, summary, outputs = runAction(t, fixture, map[string]string{"kernel": "6.12", "arch": "arm64", "go-test": "./... -v"})
	require.Equal(t, 0, code, "the action failed on a passing module in an arm64 guest")
	assert.Contains(t, summary, "2 passed")
	assert.Contains(t, summary, "6.12/arm64")
	assert.Equal(t, "vmtest-results-job-6.12-arm64", outputs["artifact"])
}
