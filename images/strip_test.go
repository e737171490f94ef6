package images

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStripDWARF strips a real Go test binary and checks that it still runs,
// keeps every symbol and loses only its DWARF.
func TestStripDWARF(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go test binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "images.test")
	build := exec.Command("go", "test", "-c", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	orig, err := os.ReadFile(bin)
	require.NoError(t, err)

	stripped, ok := StripDWARF(orig)
	require.True(t, ok, "a Go test binary has the expected layout")
	t.Logf("%d -> %d bytes", len(orig), len(stripped))
	assert.Less(t, len(stripped), len(orig)*85/100, "DWARF is a large part of a Go binary")

	fo, err := elf.NewFile(bytes.NewReader(orig))
	require.NoError(t, err)
	fs, err := elf.NewFile(bytes.NewReader(stripped))
	require.NoError(t, err)
	var keptNames []string
	for _, s := range fo.Sections {
		if !strings.HasPrefix(s.Name, ".debug_") {
			keptNames = append(keptNames, s.Name)
		}
	}
	var gotNames []string
	for _, s := range fs.Sections {
		gotNames = append(gotNames, s.Name)
	}
	assert.Equal(t, keptNames, gotNames)
	_, err = fs.DWARF()
	assert.Error(t, err, "no DWARF left")
	so, err := fo.Symbols()
	require.NoError(t, err)
	ss, err := fs.Symbols()
	require.NoError(t, err)
	assert.Equal(t, so, ss, "the symbol table is kept whole")
	for i, p := range fo.Progs {
		if p.Type == elf.PT_LOAD {
			// Past the ELF header, whose section header fields change.
			from := max(p.Off, 64)
			assert.Equal(t, orig[from:p.Off+p.Filesz], stripped[from:p.Off+p.Filesz], "segment %d", i)
		}
	}

	// It still runs: list the tests of this package.
	sbin := filepath.Join(dir, "stripped.test")
	require.NoError(t, os.WriteFile(sbin, stripped, 0o755))
	list, err := exec.Command(sbin, "-test.list", "^TestStripDWARF$").CombinedOutput()
	require.NoError(t, err, "%s", list)
	assert.Equal(t, "TestStripDWARF\n", string(list))

	// Stripping again finds nothing to strip; other input is left alone.
	again, ok := StripDWARF(stripped)
	assert.False(t, ok)
	assert.Equal(t, stripped, again)
	for _, b := range [][]byte{nil, []byte("#!/bin/sh\necho hi\n"), orig[:100]} {
		got, ok := StripDWARF(b)
		assert.False(t, ok)
		assert.Equal(t, b, got)
	}
}
