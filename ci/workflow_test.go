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

// TestKernelListsAgree: the workflow's matrix is the kernels package's
// (it asks `vmtest kernels -matrix`), and the kernels the Makefile names are
// in it, so a kernel dropped from the matrix (or renamed) cannot linger.
func TestKernelListsAgree(t *testing.T) {
	known := map[string]bool{}
	for _, k := range kernels.MatrixNames("") {
		known[k] = true
	}
	wf, err := os.ReadFile("../.github/workflows/vmtest.yml")
	require.NoError(t, err)
	assert.Contains(t, string(wf), "vmtest kernels -matrix", "the workflow's matrix comes from kernels.Matrix")
	assert.Contains(t, string(wf), "include: ${{ fromJSON(needs.matrix.outputs.kernels) }}")
	assert.NotContains(t, string(wf), "-${{ matrix.kernel }}", "artifact and cache names take matrix.id: a kernel name may have a /")
	assert.NotRegexp(t, `(?m)^\s*kernel: \[`, string(wf), "no hand-written kernel list")
	mk, err := os.ReadFile("../Makefile")
	require.NoError(t, err)
	for _, v := range []string{"KERNEL", "BENCH_KERNELS"} {
		m := regexp.MustCompile(`(?m)^` + v + `\s*\?=\s*(\S+)`).FindSubmatch(mk)
		require.NotNil(t, m, "no %s in the Makefile", v)
		for _, k := range strings.Split(string(m[1]), ",") {
			assert.True(t, known[k], "Makefile %s names %q, not one of %v", v, k, kernels.MatrixNames(""))
		}
	}
	assert.True(t, known[kernels.DefaultVersion])
	var local []string
	for _, k := range kernels.Matrix() {
		if k.Local {
			local = append(local, k.FullName())
		}
	}
	assert.Equal(t, local, guestKernels, "the kernels make test boots are the matrix's Local ones")
}
