package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/skbstore/skbstore/vmtest"
)

func TestSplitGoTestArgs(t *testing.T) {
	tests := []struct {
		in                   []string
		pkgs, flags, binArgs []string
	}{
		{[]string{"./..."}, []string{"./..."}, nil, nil},
		{[]string{"-run", "X", "./a", "-v"}, []string{"./a"}, []string{"-run", "X", "-v"}, nil},
		{[]string{"-count=1", "./a", "./b"}, []string{"./a", "./b"}, []string{"-count=1"}, nil},
		{[]string{"./sub", "-args", "-x", "./not-a-package"}, []string{"./sub"}, nil, []string{"-args", "-x", "./not-a-package"}},
		{[]string{"-v", "./sub", "--args", "-run"}, []string{"./sub"}, []string{"-v"}, []string{"--args", "-run"}},
		{[]string{"-coverprofile", "c.out", "./x"}, []string{"./x"}, []string{"-coverprofile", "c.out"}, nil},
	}
	for _, tt := range tests {
		pkgs, flags, binArgs := splitGoTestArgs(tt.in)
		assert.Equal(t, tt.pkgs, pkgs, "%q", tt.in)
		assert.Equal(t, tt.flags, flags, "%q", tt.in)
		assert.Equal(t, tt.binArgs, binArgs, "%q", tt.in)
	}
}

func TestCommandID(t *testing.T) {
	for bin, want := range map[string]string{
		"/tmp/go-build1/b001/pkg.test": "pkg",
		"/x/a+b.test":                  "a_b",
		"/x/ünï.test":                  "_n_",
		"/x/with space.test":           "with_space",
		"/x/.test":                     "test",
		"/x/...test":                   "test",
	} {
		assert.Equal(t, want, commandID(bin), bin)
	}
}

func TestKernelTag(t *testing.T) {
	var b bytes.Buffer
	k := &kernelTag{w: &b, kernel: "6.1"}
	for _, l := range []string{`{"Action":"run","Test":"TestX"}` + "\n", "{}\n", "not json\n"} {
		n, err := k.Write([]byte(l))
		assert.NoError(t, err)
		assert.Equal(t, len(l), n)
	}
	assert.Equal(t, `{"Kernel":"6.1","Action":"run","Test":"TestX"}`+"\n"+`{"Kernel":"6.1"}`+"\nnot json\n", b.String())
}

func TestTestOutputs(t *testing.T) {
	// What go 1.26 passes to a test binary for
	// go test -coverprofile=/tmp/ex/cov.out -cpuprofile=cpu.out -memprofile=/tmp/ex/mem.out -trace=tr.out
	args := []string{"-test.paniconexit0", "-test.gocoverdir=/tmp/go-build1/b001/gocoverdir", "-test.timeout=10m0s",
		"-test.outputdir=/tmp/bf", "-test.coverprofile=/tmp/go-build1/b001/_cover_.out", "-test.cpuprofile=cpu.out",
		"-test.memprofile=/tmp/ex/mem.out", "-test.trace", "tr.out", "-test.v=test2json", "-args", "-test.blockprofile=rel/b.out"}
	env := map[string]string{"GOCOVERDIR": "/tmp/go-build1/b001/gocoverdir", "GODEBUG": "x=1", "HOME": "/root"}
	outs, genv := testOutputs(args, "/src/pkg", func(k string) string { return env[k] })
	assert.Equal(t, []vmtest.Output{
		{Guest: "/tmp/go-build1/b001/_cover_.out", Host: "/tmp/go-build1/b001/_cover_.out"},
		{Guest: "/tmp/bf/cpu.out", Host: "/tmp/bf/cpu.out"},
		{Guest: "/tmp/ex/mem.out", Host: "/tmp/ex/mem.out"},
		{Guest: "/tmp/bf/tr.out", Host: "/tmp/bf/tr.out"},
		{Guest: "/tmp/bf/rel/b.out", Host: "/tmp/bf/rel/b.out"},
		{Guest: "/tmp/go-build1/b001/gocoverdir", Host: "/tmp/go-build1/b001/gocoverdir", Dir: true},
	}, outs)
	assert.Equal(t, []string{"GOCOVERDIR=/tmp/go-build1/b001/gocoverdir", "GODEBUG=x=1"}, genv)

	outs, _ = testOutputs([]string{"-test.cpuprofile=cpu.out"}, "/src/pkg", func(string) string { return "" })
	assert.Equal(t, []vmtest.Output{{Guest: "/src/pkg/cpu.out", Host: "/src/pkg/cpu.out"}}, outs, "relative to the working directory without -test.outputdir")

	// go test -fuzz=FuzzX: new failing inputs go to the package's
	// testdata/fuzz, interesting ones to the fuzzing cache.
	outs, _ = testOutputs([]string{"-test.paniconexit0", "-test.fuzzcachedir=/root/.cache/go-build/fuzz/example.com/pkg", "-test.timeout=10m0s",
		"-test.fuzz=FuzzX", "-test.fuzztime=5s"}, "/src/pkg", func(string) string { return "" })
	assert.Equal(t, []vmtest.Output{
		{Guest: "/root/.cache/go-build/fuzz/example.com/pkg", Host: "/root/.cache/go-build/fuzz/example.com/pkg", Dir: true},
		{Guest: "/src/pkg/testdata/fuzz", Host: "/src/pkg/testdata/fuzz", Dir: true},
	}, outs)
}
