// Package history remembers how long each package's tests ran on each
// kernel, so that a run with more work than guests can start the longest
// first: the run then ends with short packages side by side instead of one
// long package alone while the other guests have nothing to do.
//
// The history is a hint, never a result: a missing, stale or damaged file
// only costs the ordering, so reading it never fails a run.
package history

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// MaxEntries bounds the file: the least recently run packages go first.
const MaxEntries = 4096

// Store holds the durations of one file.
type Store struct {
	path string

	mu      sync.Mutex
	entries map[key]entry // the file's, as read, and this run's
	changed map[key]entry // this run's, merged into the file on Save
}

type key struct{ Kernel, Package string }

type entry struct {
	Seconds float64 `json:"seconds"`
	When    int64   `json:"when"` // Unix seconds of the run
}

// fileEntry is one line of the file's list.
type fileEntry struct {
	Kernel  string `json:"kernel"`
	Package string `json:"package"`
	entry
}

type file struct {
	Version int         `json:"version"`
	Entries []fileEntry `json:"entries"`
}

const version = 1

// Open reads the history at path. A file that is missing, unreadable or not
// ours gives an empty history: the run goes on in go test's order.
func Open(path string) *Store {
	s := &Store{path: path, entries: map[key]entry{}, changed: map[key]entry{}}
	if m, err := read(path); err == nil {
		s.entries = m
	}
	return s
}

func read(path string) (map[key]entry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	if f.Version != version {
		return nil, fmt.Errorf("history %s: version %d, not %d", path, f.Version, version)
	}
	m := make(map[key]entry, len(f.Entries))
	for _, e := range f.Entries {
		if e.Seconds < 0 || e.Seconds != e.Seconds { // negative or NaN: not ours
			continue
		}
		m[key{e.Kernel, e.Package}] = e.entry
	}
	return m, nil
}

// Expect returns how long pkg (a package directory) ran on kernel last
// time; for a kernel it never ran on, the mean of the kernels it ran on;
// for a package never run, 0.
func (s *Store) Expect(kernel, pkg string) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[key{kernel, pkg}]; ok {
		return seconds(e.Seconds)
	}
	var sum float64
	var n int
	for k, e := range s.entries {
		if k.Package == pkg {
			sum += e.Seconds
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return seconds(sum / float64(n))
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// Record notes that pkg ran for d on kernel.
func (s *Store) Record(kernel, pkg string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := entry{Seconds: d.Seconds(), When: time.Now().Unix()}
	s.entries[key{kernel, pkg}] = e
	s.changed[key{kernel, pkg}] = e
}

// Save merges this run's durations into the file as it is now (another run
// may have written it meanwhile), forgets the packages whose directory is
// gone, and replaces the file whole, so that a reader never sees half a
// file.
func (s *Store) Save() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.changed) == 0 {
		return nil
	}
	m, err := read(s.path)
	if err != nil {
		m = map[key]entry{}
	}
	for k, e := range s.changed {
		m[k] = e
	}
	for k := range m {
		// A package whose directory is gone (a temporary module, a
		// removed checkout) will not run again.
		if _, err := os.Stat(k.Package); errors.Is(err, fs.ErrNotExist) {
			delete(m, k)
		}
	}
	f := file{Version: version, Entries: make([]fileEntry, 0, len(m))}
	for k, e := range m {
		f.Entries = append(f.Entries, fileEntry{Kernel: k.Kernel, Package: k.Package, entry: e})
	}
	sort.Slice(f.Entries, func(i, j int) bool {
		a, b := f.Entries[i], f.Entries[j]
		if a.When != b.When {
			return a.When > b.When
		}
		if a.Package != b.Package {
			return a.Package < b.Package
		}
		return a.Kernel < b.Kernel
	})
	if len(f.Entries) > MaxEntries {
		f.Entries = f.Entries[:MaxEntries]
	}
	b, err := json.MarshalIndent(f, "", "\t")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o755); err != nil {
		return fmt.Errorf("save history: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), ".history-*")
	if err != nil {
		return fmt.Errorf("save history: %w", err)
	}
	_, werr := tmp.Write(append(b, '\n'))
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("save history: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("save history: %w", err)
	}
	s.changed = map[key]entry{}
	return nil
}
