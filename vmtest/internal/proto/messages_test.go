package proto

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestJobRoundTrip(t *testing.T) {
	tests := []Job{
		{},
		{Commands: []Command{{ID: "a", Path: "/vmtest/bin/a"}}},
		{
			Commands: []Command{
				{ID: "pkg.test", Path: "/vmtest/bin/pkg.test", Dir: "/src/pkg", Args: []string{"-test.run", "^(A|B)$", "", "with space", "new\nline", "ünïcode"}},
				{ID: "shell", Path: "/bbin/gosh", Dir: "/src", Terminal: true},
				{ID: "failing", Path: "/x.test", Dir: "/src", ShellOnFail: "gosh"},
				{ID: "second", Path: "/x", Args: []string{"-v"}, Outputs: []Output{{Path: "/tmp/w/b001/_cover_.out"}, {Path: "/tmp/w/b001/gocoverdir", Dir: true}}},
			},
			Modules:    []string{"/lib/modules/6.1/kernel/drivers/net/veth.ko"},
			Env:        []string{"A=1", "B="},
			ResultPort: "/dev/hvc0",
			Console:    "/dev/ttyAMA0",
			ExitPort:   0xf4,
			Key:        bytes.Repeat([]byte{0xa5}, KeySize),
			Limits:     Limits{Output: 1 << 30, ArtifactBytes: 5, ArtifactFiles: 7},
			Disks: []Disk{
				{Label: "vmtmods", Dir: "/lib/modules/6.1", ReadOnly: true},
				{Label: "vmtshare", Dir: "/.vmtest/share", Binds: []string{"/tmp/a b", "/bin/bash"}},
			},
		},
		{Serve: true, Key: []byte{1}},
		{Commands: []Command{{
			ID: "p01", Path: "/vmtest/bin/p01", Dir: "/src/p01", Env: []string{"GOCOVERDIR=/tmp/c", "X="},
			Files: []SpoolFile{
				{Path: "/vmtest/bin/p01", Mode: 0o755, Offset: 4096, Size: 1234, CRC32C: 0xab12},
				{Path: "/lib/x86_64-linux-gnu/libc.so.6", Mode: 0o644, Offset: 8192, Size: 0, CRC32C: 0xffffffff},
			},
		}}},
	}
	for _, j := range tests {
		b, err := j.MarshalBinary()
		require.NoError(t, err)
		var got Job
		require.NoError(t, got.UnmarshalBinary(b))
		assert.Equal(t, j, got)
	}
}

func TestJobDamaged(t *testing.T) {
	good, err := (&Job{Commands: []Command{{ID: "a", Path: "/a", Args: []string{"x", "y"}}}}).MarshalBinary()
	require.NoError(t, err)
	tests := map[string][]byte{
		"empty":            nil,
		"not terminated":   good[:len(good)-1],
		"cut in the args":  good[:len(good)-2],
		"json":             []byte(`{"commands":[]}` + "\x00"),
		"unknown entry":    append(append([]byte(nil), good...), "frobnicate\x00x\x00"...),
		"bad arg count":    []byte(jobMagic + "\x00cmd\x00a\x00/a\x00\x00many\x00"),
		"bad key":          []byte(jobMagic + "\x00key\x00zz\x00"),
		"cut limits":       []byte(jobMagic + "\x00limits\x001\x00"),
		"arg count beyond": []byte(jobMagic + "\x00cmd\x00a\x00/a\x00\x009\x00x\x00"),
		"spool file first": []byte(jobMagic + "\x00spool_file\x00/a\x00755\x004096\x001\x00ab\x00"),
		"spool unaligned":  []byte(jobMagic + "\x00cmd\x00a\x00/a\x00\x000\x00spool_file\x00/a\x00755\x004097\x001\x00ab\x00"),
		"spool negative":   []byte(jobMagic + "\x00cmd\x00a\x00/a\x00\x000\x00spool_file\x00/a\x00755\x004096\x00-1\x00ab\x00"),
		"spool bad mode":   []byte(jobMagic + "\x00cmd\x00a\x00/a\x00\x000\x00spool_file\x00/a\x009\x004096\x001\x00ab\x00"),
		"spool bad crc":    []byte(jobMagic + "\x00cmd\x00a\x00/a\x00\x000\x00spool_file\x00/a\x00755\x004096\x001\x00xyz\x00"),
		"cmd env first":    []byte(jobMagic + "\x00cmd_env\x00A=1\x00"),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			var j Job
			assert.Error(t, j.UnmarshalBinary(b))
		})
	}
}

func TestMarshalRejectsNUL(t *testing.T) {
	_, err := (&Job{Env: []string{"A=\x00"}}).MarshalBinary()
	assert.ErrorContains(t, err, "NUL")
}

func TestHelloExitRoundTrip(t *testing.T) {
	h := Hello{Release: "6.1.0-56-cloud-amd64", Version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)", Uptime: 1.568886}
	b, err := h.MarshalBinary()
	require.NoError(t, err)
	var gotH Hello
	require.NoError(t, gotH.UnmarshalBinary(b))
	assert.Equal(t, h.Release, gotH.Release)
	assert.Equal(t, h.Version, gotH.Version)
	assert.InDelta(t, h.Uptime, gotH.Uptime, 1e-6)

	for _, x := range []Exit{{Code: 0, Duration: 1500 * time.Millisecond}, {Code: -1, Error: "exec: no such file"}, {Code: 2}} {
		b, err := x.MarshalBinary()
		require.NoError(t, err)
		var got Exit
		require.NoError(t, got.UnmarshalBinary(b))
		assert.Equal(t, x, got)
	}

	var x Exit
	assert.Error(t, x.UnmarshalBinary([]byte("code\x00")), "key without value")
	assert.Error(t, x.UnmarshalBinary([]byte("code\x00zero\x00")), "bad number")
	assert.NoError(t, x.UnmarshalBinary([]byte("code\x003\x00later\x00field\x00")), "unknown keys are for newer agents")
	assert.Equal(t, 3, x.Code)
}

func TestEscapeName(t *testing.T) {
	tests := map[string]string{
		"skbstore/verifier/6.1/prog.log": "skbstore/verifier/6.1/prog.log",
		"a b":                            "a%20b",
		"100%":                           "100%25",
		"tab\tnew\nline":                 "tab%09new%0Aline",
		"ü":                              "%C3%BC",
		"~-._":                           "~-._",
	}
	for in, want := range tests {
		got := EscapeName(in)
		assert.Equal(t, want, got)
		assert.NoError(t, checkToken(got))
		back, err := UnescapeName(got)
		require.NoError(t, err)
		assert.Equal(t, in, back)
	}
	for _, bad := range []string{"%", "%4", "%zz", "a%g1"} {
		_, err := UnescapeName(bad)
		assert.Error(t, err, bad)
	}
}
