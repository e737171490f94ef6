package history

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestExpect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.json")
	s := Open(path)
	s.Record("6.1", "/m/long", 50*time.Second)
	s.Record("6.12", "/m/long", 70*time.Second)
	s.Record("6.1", "/m/short", 10*time.Second)
	for _, tc := range []struct {
		kernel, pkg string
		want        time.Duration
	}{
		{"6.1", "/m/long", 50 * time.Second},
		{"6.12", "/m/long", 70 * time.Second},
		{"7.3", "/m/long", 60 * time.Second}, // never on 7.3: the mean of the others
		{"7.3", "/m/short", 10 * time.Second},
		{"6.1", "/m/never", 0},
	} {
		require.Equal(t, tc.want, s.Expect(tc.kernel, tc.pkg), "%s on %s", tc.pkg, tc.kernel)
	}
}

func TestSaveMergesAndReopens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.json")
	a, b := Open(path), Open(path)
	a.Record("6.1", "/m/a", 3*time.Second)
	b.Record("6.1", "/m/b", 4*time.Second)
	b.Record("6.1", "/m/a", 5*time.Second) // b ran /m/a too, and saves last
	require.NoError(t, a.Save())
	require.NoError(t, b.Save())
	c := Open(path)
	require.Equal(t, 5*time.Second, c.Expect("6.1", "/m/a"))
	require.Equal(t, 4*time.Second, c.Expect("6.1", "/m/b"))
	// A save with nothing new leaves the file alone.
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.NoError(t, c.Save())
	st2, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, st.ModTime(), st2.ModTime())
}

func TestBadFilesAreEmpty(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"garbage":     "not json",
		"other":       `{"version": 99, "entries": [{"kernel": "6.1", "package": "/p", "seconds": 3}]}`,
		"negative":    `{"version": 1, "entries": [{"kernel": "6.1", "package": "/p", "seconds": -3}]}`,
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
			require.Zero(t, s.Expect("6.1", "/p"))
			if name != "not-a-file/" {
				// Saving replaces what could not be read.
				s.Record("6.1", "/p", time.Second)
				require.NoError(t, s.Save())
				require.Equal(t, time.Second, Open(path).Expect("6.1", "/p"))
			}
		})
	}
}

func TestCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "history.json")
	s := Open(path)
	for i := 0; i < MaxEntries+10; i++ {
		s.Record("6.1", filepath.Join("/m", string(rune('a'+i%26)), time.Duration(i).String()), time.Second)
	}
	require.NoError(t, s.Save())
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	m, err := read(path)
	require.NoError(t, err, "%s", b[:100])
	require.Len(t, m, MaxEntries)
}
