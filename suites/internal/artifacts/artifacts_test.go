package artifacts

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestWriteUsesVMTestDir(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("VMTEST_ARTIFACTS", dir)
	p, err := WriteJSON("a/b.json", map[string]int{"x": 1})
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "a", "b.json"), p)
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	require.JSONEq(t, `{"x":1}`, string(b))
}

func TestDirFallsBack(t *testing.T) {
	t.Setenv("VMTEST_ARTIFACTS", "")
	alt := t.TempDir()
	t.Setenv("SKBSTORE_ARTIFACTS", alt)
	d, err := Dir()
	require.NoError(t, err)
	require.Equal(t, alt, d)

	t.Setenv("SKBSTORE_ARTIFACTS", "")
	d, err = Dir()
	require.NoError(t, err)
	require.Equal(t, filepath.Join(os.TempDir(), "skbstore-artifacts"), d)
}
