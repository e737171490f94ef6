package history

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// pkgDirs makes package directories named names under a temporary module.
func pkgDirs(t *testing.T, names ...string) map[string]string {
	t.Helper()
	mod := t.TempDir()
	dirs := map[string]string{}
	for _, n := range names {
		dirs[n] = filepath.Join(mod, n)
		require.NoError(t, os.MkdirAll(dirs[n], 0o755))
	}
	return dirs
}

func TestExpect(t *testing.T) {
	p := pkgDirs(t, "long", "short", "never")
	s := Open(filepath.Join(t.TempDir(), "history.json"))
	s.Record("6.1", p["long"], 50*time.Second)
	s.Record("6.12", p["long"], 70*time.Second)
	s.Record("6.1", p["short"], 10*time.Second)
	for _, tc := range []struct {
		kernel, pkg string
		want        time.Duration
	}{
		{"6.1", "long", 50 * time.Second},
		{"6.12", "long", 70 * time.Second},
		{"7.3", "long", 60 * time.Second}, // never on 7.3: the mean of the others
		{"7.3", "short", 10 * time.Second},
		{"6.1", "never", 0},
	} {
		require.Equal(t, tc.want, s.Expect(tc.kernel, p[tc.pkg]), "%s on %s", tc.pkg, tc.kernel)
	}
}

func TestSaveMergesAndReopens(t *testing.T) {
	p := pkgDirs(t, "a", "b")
	path := filepath.Join(t.TempDir(), "history.json")
	a, b := Open(path), Open(path)
	a.Record("6.1", p["a"], 3*time.Second)
	b.Record("6.1", p["b"], 4*time.Second)
	b.Record("6.1", p["a"], 5*time.Second) // b ran a too, and saves last
	require.NoError(t, a.Save())
	require.NoError(t, b.Save())
	c := Open(path)
	require.Equal(t, 5*time.Second, c.Expect("6.1", p["a"]))
	require.Equal(t, 4*time.Second, c.Expect("6.1", p["b"]))
	// A save with nothing new leaves the file alone.
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.NoError(t, c.Save())
	st2, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, st.ModTime(), st2.ModTime())
}

func TestGonePackagesForgotten(t *testing.T) {
	p := pkgDirs(t, "kept", "gone")
	path := filepath.Join(t.TempDir(), "history.json")
	s := Open(path)
	s.Record("6.1", p["kept"], time.Second)
	s.Record("6.1", p["gone"], time.Second)
	require.NoError(t, s.Save())
	require.NoError(t, os.Remove(p["gone"]))
	s = Open(path)
	s.Record("6.12", p["kept"], time.Second)
	require.NoError(t, s.Save())
	m, err := read(path)
	require.NoError(t, err)
	require.Equal(t, map[key]entry{{"6.1", p["kept"]}: m[key{"6.1", p["kept"]}], {"6.12", p["kept"]}: m[key{"6.12", p["kept"]}]}, m)
}

func TestBadFilesAreEmpty(t *testing.T) {
	pkg := pkgDirs(t, "p")["p"]
	dir := t.TempDir()
	for name, content := range map[string]string{
		"garbage":     "not json",
		"other":       fmt.Sprintf(`{"version": 99, "entries": [{"kernel": "6.1", "package": %q, "seconds": 3}]}`, pkg),
		"negative":    fmt.Sprintf(`{"version": 1, "entries": [{"kernel": "6.1", "package": %q, "seconds": -3}]}`, pkg),
		"truncated":   `{"version": 1, "entries": [{"kernel": "6.1", "pack`,
		"not-a-file/": "",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			if name == "not-a-file/" {
				require.NoError(t, os.MkdirAll(path, 0o755))
			} else {
				require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
			}
			s := Open(path)
			require.Zero(t, s.Expect("6.1", pkg))
			if name != "not-a-file/" {
				// Saving replaces what could not be read.
				s.Record("6.1", pkg, time.Second)
				require.NoError(t, s.Save())
				require.Equal(t, time.Second, Open(path).Expect("6.1", pkg))
			}
		})
	}
}

func TestCap(t *testing.T) {
	pkg := pkgDirs(t, "p")["p"]
	path := filepath.Join(t.TempDir(), "history.json")
	s := Open(path)
	for i := 0; i < MaxEntries+10; i++ {
		s.Record(fmt.Sprintf("kernel-%d", i), pkg, time.Second)
	}
	require.NoError(t, s.Save())
	m, err := read(path)
	require.NoError(t, err)
	require.Len(t, m, MaxEntries)
}
