package kernels

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// CachedKernel is one complete kernel in the cache.
type CachedKernel struct {
	Name      string       // canonical name, e.g. "6.1", "6.1-generic" or "6.12/arm64"
	Arch      string       // architecture: "amd64" or "arm64"
	Release   string       // `uname -r`
	Source    string       // "debian" or "oci"
	Version   string       // version of the main package (or the OCI digest)
	Packages  []PackageRef // everything it was made from
	Dir       string       // the extracted tree
	TreeSize  int64        // bytes of the extracted tree
	DebSize   int64        // bytes of its downloaded packages still in the cache
	FetchedAt time.Time
}

// List returns the complete kernels in the cache, by name and then newest
// first. Incomplete or corrupt entries are left out.
func (c *Cache) List() ([]CachedKernel, error) {
	ents, err := os.ReadDir(c.treesDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var out []CachedKernel
	for _, e := range ents {
		dir := filepath.Join(c.treesDir(), e.Name())
		m, err := readTreeMeta(dir)
		if err != nil || checkTree(dir, m, false) != nil {
			continue
		}
		ck := CachedKernel{Name: m.Name, Arch: m.arch(), Release: m.Release, Source: m.Source, Packages: m.Packages,
			Dir: dir, TreeSize: m.DiskBytes, FetchedAt: m.FetchedAt}
		if len(m.Packages) > 0 {
			ck.Version = m.Packages[0].Version
		}
		for _, p := range m.Packages {
			if st, err := os.Stat(c.debPath(p.SHA256)); err == nil {
				ck.DebSize += st.Size()
			}
		}
		out = append(out, ck)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].FetchedAt.After(out[j].FetchedAt)
	})
	return out, nil
}
