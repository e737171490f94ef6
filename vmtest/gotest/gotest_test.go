package gotest

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestReaderSummarizes(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"start","Package":"m/a"}`,
		`{"Action":"run","Package":"m/a","Test":"TestOK"}`,
		`{"Action":"pass","Package":"m/a","Test":"TestOK","Elapsed":0.5}`,
		`{"Action":"run","Package":"m/a","Test":"TestBad"}`,
		`{"Action":"output","Package":"m/a","Test":"TestBad","Output":"    a_test.go:3: nope\n"}`,
		`{"Action":"run","Package":"m/a","Test":"TestBad/sub"}`,
		`{"Action":"fail","Package":"m/a","Test":"TestBad/sub"}`,
		`{"Action":"fail","Package":"m/a","Test":"TestBad"}`,
		`{"Action":"run","Package":"m/a","Test":"TestSkip"}`,
		`{"Action":"skip","Package":"m/a","Test":"TestSkip"}`,
		`{"Action":"run","Package":"m/a","Test":"TestDied"}`,
		`{"Action":"output","Package":"m/a","Output":"vmtest: guest failed: kernel panic\n"}`,
		`{"Action":"fail","Package":"m/a","Elapsed":3}`,
		`# m/b`,
		`b.go:1: syntax error`,
		`{"Action":"start","Package":"m/c"}`,
		`{"Action":"fail","Package":"m/c"}`,
	}, "\n")
	var finished []string
	r := &Reader{OnTest: func(t *Test) { finished = append(finished, t.Name+"="+t.Outcome) }}
	sum, err := r.Read(strings.NewReader(in))
	require.NoError(t, err)
	assert.Equal(t, []string{"TestOK=pass", "TestBad/sub=fail", "TestBad=fail", "TestSkip=skip"}, finished)

	require.Len(t, sum.Packages, 3) // "", m/a, m/c
	assert.Equal(t, "", sum.Packages[0].Name)
	assert.Contains(t, sum.Packages[0].Output, "syntax error")
	a := sum.Packages[1]
	assert.Equal(t, "fail", a.Outcome)
	died := a.Tests[len(a.Tests)-1]
	assert.Equal(t, "TestDied", died.Name)
	assert.Equal(t, Unfinished, died.Outcome)
	assert.Contains(t, a.Output, "kernel panic")

	// ok, skip, and failures: TestBad, TestBad/sub, TestDied, the build
	// error and the package that failed without tests.
	passed, failed, skipped := sum.Counts()
	assert.Equal(t, []int{1, 5, 1}, []int{passed, failed, skipped})
	assert.True(t, sum.Failed())
}

// TestBuildFailureCountsOnce reads what go 1.26's `go test -json ./...` printed
// for a module with one package that does not compile and one that passes:
// the broken package is one failure, with the compiler's message.
func TestBuildFailureCountsOnce(t *testing.T) {
	f, err := os.Open("testdata/buildfail.json")
	require.NoError(t, err)
	defer f.Close()
	var r Reader
	sum, err := r.Read(f)
	require.NoError(t, err)
	require.Len(t, sum.Packages, 2)
	passed, failed, skipped := sum.Counts()
	assert.Equal(t, []int{1, 1, 0}, []int{passed, failed, skipped})
	broken := sum.Packages[0]
	assert.Equal(t, "example.com/bf/broken", broken.Name)
	assert.Equal(t, Fail, broken.Outcome)
	assert.Contains(t, broken.Output, "undefined: undefined")
	assert.Contains(t, broken.Output, "[build failed]")
}
