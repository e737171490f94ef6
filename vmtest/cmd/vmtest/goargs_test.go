package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
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
