package ci

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/rhysd/actionlint"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/skbstore/skbstore/kernels"
)

func TestWorkflowsPassActionlint(t *testing.T) {
	files, err := filepath.Glob("../.github/workflows/*.yml")
	require.NoError(t, err)
	require.NotEmpty(t, files, "no workflow found")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			require.NoError(t, err)
			var out bytes.Buffer
			l, err := actionlint.NewLinter(&out, &actionlint.LinterOptions{})
			require.NoError(t, err)
			errs, err := l.Lint(f, b, nil)
			require.NoError(t, err)
			for _, e := range errs {
				t.Errorf("%s", e.Error())
			}
			if len(errs) > 0 {
				t.Logf("%s", out.String())
			}
		})
	}
}

// TestActionlintCatchesErrors makes sure the check above can fail.
func TestActionlintCatchesErrors(t *testing.T) {
	bad := []byte("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nosuch }}\n")
	l, err := actionlint.NewLinter(&bytes.Buffer{}, &actionlint.LinterOptions{})
	require.NoError(t, err)
	errs, err := l.Lint("bad.yml", bad, nil)
	require.NoError(t, err)
	assert.NotEmpty(t, errs)
}

// TestKernelListsAgree: the kernels the workflow and the Makefile name are
// ones the fetcher knows, so a kernel dropped from the matrix (or renamed)
// cannot linger in CI.
func TestKernelListsAgree(t *testing.T) {
	known := map[string]bool{}
	for _, k := range kernels.Available() {
		known[k] = true
	}
	wf, err := os.ReadFile("../.github/workflows/vmtest.yml")
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^\s*kernel: \[(.*)\]`).FindSubmatch(wf)
	require.NotNil(t, m, "no kernel matrix in the workflow")
	for _, k := range strings.Split(string(m[1]), ",") {
		k = strings.Trim(strings.TrimSpace(k), `"'`)
		assert.True(t, known[k], "workflow kernel %q is not one of %v", k, kernels.Available())
	}
	mk, err := os.ReadFile("../Makefile")
	require.NoError(t, err)
	for _, v := range []string{"KERNEL", "BENCH_KERNELS"} {
		m := regexp.MustCompile(`(?m)^` + v + `\s*\?=\s*(\S+)`).FindSubmatch(mk)
		require.NotNil(t, m, "no %s in the Makefile", v)
		for _, k := range strings.Split(string(m[1]), ",") {
			assert.True(t, known[k], "Makefile %s names %q, not one of %v", v, k, kernels.Available())
		}
	}
	assert.True(t, known[kernels.DefaultVersion])
}
