package kernels

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// metaFormat changes whenever the tree layout or metadata change meaning,
// which makes older entries count as absent.
const metaFormat = 1

// treeMeta describes an extracted kernel tree; it is the content of the
// tree's "complete" marker, which is written last.
type treeMeta struct {
	Format         int          `json:"format"`
	Name           string       `json:"name"` // canonical name: "6.1", "6.1-generic"
	Key            string       `json:"key"`
	Source         string       `json:"source"`
	Arch           string       `json:"arch,omitempty"` // "" (a marker from before arm64): amd64
	Release        string       `json:"release"`
	Packages       []PackageRef `json:"packages"`
	ImageSize      int64        `json:"image_size"`
	ImageSHA256    string       `json:"image_sha256"`
	ConfigSize     int64        `json:"config_size"`      // -1: no config
	ModulesDepSize int64        `json:"modules_dep_size"` // -1: no modules
	ModuleFiles    int          `json:"module_files"`     // all files under lib/modules/<release>
	ModulesBytes   int64        `json:"modules_bytes"`
	DiskBytes      int64        `json:"disk_bytes"` // whole tree
	Depmod         string       `json:"depmod"`     // "kmod" or "builtin"
	FetchedAt      time.Time    `json:"fetched_at"`
}

// arch is the tree's architecture.
func (m treeMeta) arch() string {
	if m.Arch == "" {
		return DefaultArch
	}
	return m.Arch
}

// resolution is what a name resolved to at some time: it lets a warm Get
// find its tree without asking apt or the network.
type resolution struct {
	Format     int          `json:"format"`
	Name       string       `json:"name"`
	SourceID   string       `json:"source_id"`
	Key        string       `json:"key"`
	Packages   []PackageRef `json:"packages"`
	ResolvedAt time.Time    `json:"resolved_at"`
}

func (c *Cache) treesDir() string          { return filepath.Join(c.kernelsDir(), "trees") }
func (c *Cache) treeDir(key string) string { return filepath.Join(c.treesDir(), key) }
func (c *Cache) debPath(sha string) string { return filepath.Join(c.kernelsDir(), "debs", sha+".deb") }
func (c *Cache) tmpDir() string            { return filepath.Join(c.kernelsDir(), "tmp") }
func (c *Cache) lockPath(name string) string {
	return filepath.Join(c.kernelsDir(), "locks", fileName(name)+".lock")
}
func (c *Cache) resolutionPath(canonical string) string {
	return filepath.Join(c.kernelsDir(), "resolved", fileName(canonical)+".json")
}

// treeKey names a tree after its main package and version, which Debian
// never reuses for different content.
func treeKey(p PackageRef) string {
	return strings.ReplaceAll(p.Name+"_"+p.Version, ":", "%3a")
}

func (c *Cache) readResolution(canonical, sourceID string) (resolution, bool) {
	var r resolution
	b, err := os.ReadFile(c.resolutionPath(canonical))
	if err != nil || json.Unmarshal(b, &r) != nil {
		return resolution{}, false
	}
	if r.Format != metaFormat || r.SourceID != sourceID || r.Key == "" || len(r.Packages) == 0 {
		return resolution{}, false
	}
	return r, true
}

func (c *Cache) writeResolution(r resolution) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.resolutionPath(r.Name)), 0o755); err != nil {
		return err
	}
	return writeFileAtomic(c.resolutionPath(r.Name), b)
}

func readTreeMeta(dir string) (treeMeta, error) {
	var m treeMeta
	b, err := os.ReadFile(filepath.Join(dir, treeMarker))
	if errors.Is(err, fs.ErrNotExist) {
		return m, errors.New("not fetched completely (no complete marker)")
	} else if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("unreadable complete marker: %w", err)
	}
	if m.Format != metaFormat {
		return m, fmt.Errorf("made by another version of this package (format %d, want %d)", m.Format, metaFormat)
	}
	return m, nil
}

// checkTree checks a tree against its metadata: cheaply (sizes and the
// image's magic, which must be of the tree's architecture) unless deep,
// which also hashes the image and counts every module file.
func checkTree(dir string, m treeMeta, deep bool) error {
	img := filepath.Join(dir, treeImage)
	if err := checkSize(img, m.ImageSize); err != nil {
		return err
	}
	if hdr, _, err := readImageHeader(img); err != nil || headerArch(hdr) != m.arch() {
		return fmt.Errorf("%s is not a kernel image for %s", img, m.arch())
	}
	if m.ConfigSize >= 0 {
		if err := checkSize(filepath.Join(dir, treeConfig), m.ConfigSize); err != nil {
			return err
		}
	}
	modDir := filepath.Join(dir, treeModulesRel(m.Release))
	if m.ModulesDepSize >= 0 {
		if err := checkSize(filepath.Join(modDir, "modules.dep"), m.ModulesDepSize); err != nil {
			return err
		}
	}
	if !deep {
		return nil
	}
	sum, _, err := fileSHA256(img)
	if err != nil {
		return err
	}
	if sum != m.ImageSHA256 {
		return fmt.Errorf("%s has SHA256 %s, recorded %s", img, sum, m.ImageSHA256)
	}
	if m.ModulesDepSize < 0 {
		return nil
	}
	files, bytes, err := treeStats(modDir)
	if err != nil {
		return err
	}
	if files != m.ModuleFiles || bytes != m.ModulesBytes {
		return fmt.Errorf("%s holds %d files (%d bytes), recorded %d (%d bytes)", modDir, files, bytes, m.ModuleFiles, m.ModulesBytes)
	}
	return nil
}

func checkSize(path string, want int64) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.Size() != want {
		return fmt.Errorf("%s has %d bytes, recorded %d", path, st.Size(), want)
	}
	return nil
}

// openTree returns the kernel in the tree res points to, if that tree is
// complete, intact and made from exactly res's packages.
func (c *Cache) openTree(s spec, res resolution) (*Kernel, error) {
	dir := c.treeDir(res.Key)
	m, err := readTreeMeta(dir)
	if err != nil {
		return nil, err
	}
	if !slices.Equal(m.Packages, res.Packages) {
		return nil, errors.New("made from other packages than the index now lists")
	}
	if m.arch() != s.arch {
		return nil, fmt.Errorf("holds an %s kernel, %s was asked for", m.arch(), s.arch)
	}
	if err := checkTree(dir, m, c.Verify); err != nil {
		return nil, err
	}
	return kernelFromTree(s.name, dir, m), nil
}

func kernelFromTree(name, dir string, m treeMeta) *Kernel {
	k := &Kernel{
		Name:     name,
		Arch:     m.arch(),
		Release:  m.Release,
		Source:   m.Source,
		Packages: slices.Clone(m.Packages),
		Image:    filepath.Join(dir, treeImage),
	}
	if m.ModulesDepSize >= 0 {
		k.ModulesDir = filepath.Join(dir, treeModulesRel(m.Release))
	}
	if m.ConfigSize >= 0 {
		k.Config = filepath.Join(dir, treeConfig)
	}
	if fi, err := os.Stat(filepath.Join(dir, treeVmlinux)); err == nil && fi.Mode().IsRegular() {
		k.Vmlinux = filepath.Join(dir, treeVmlinux)
	}
	if fi, err := os.Stat(filepath.Join(dir, treeSelftests)); err == nil && fi.IsDir() {
		k.Selftests = filepath.Join(dir, treeSelftests)
	}
	return k
}

// verifyDeb checks a stored package against the index's size and SHA256.
func verifyDeb(path string, ref PackageRef) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.Size() != ref.Size {
		return fmt.Errorf("%s has %d bytes, the index says %d", filepath.Base(path), st.Size(), ref.Size)
	}
	sum, _, err := fileSHA256(path)
	if err != nil {
		return err
	}
	if sum != ref.SHA256 {
		return fmt.Errorf("%s has SHA256 %s, the index says %s", filepath.Base(path), sum, ref.SHA256)
	}
	return nil
}

// installTree moves a finished stage into place as the tree for key,
// replacing a broken tree of the same key. Callers hold the key's lock.
func (c *Cache) installTree(stage, key string) error {
	if err := os.MkdirAll(c.treesDir(), 0o755); err != nil {
		return err
	}
	dst := c.treeDir(key)
	if _, err := os.Lstat(dst); err == nil {
		old, err := os.MkdirTemp(c.tmpDir(), "old-"+key+".")
		if err != nil {
			return err
		}
		if err := os.Rename(dst, filepath.Join(old, "tree")); err != nil {
			return err
		}
		defer os.RemoveAll(old)
	}
	return os.Rename(stage, dst)
}

// cleanTmp removes leftovers of fetches that died more than a day ago.
func (c *Cache) cleanTmp() {
	ents, _ := os.ReadDir(c.tmpDir())
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > 24*time.Hour {
			os.RemoveAll(filepath.Join(c.tmpDir(), e.Name()))
		}
	}
}
