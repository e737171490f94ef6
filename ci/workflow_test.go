package ci

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/rhysd/actionlint"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
