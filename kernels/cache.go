package kernels

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Environment variables that configure NewCache.
const (
	envCacheDir = "VMTEST_CACHE_DIR" // cache root (kernels live in its kernels/ subdirectory)
	envOCIRepo  = "VMTEST_OCI_REPO"  // OCI repository for versions Debian lacks
)

// DefaultMaxAge is how long package lists and name resolutions are trusted
// before Get asks the archive again.
const DefaultMaxAge = 24 * time.Hour

// Cache fetches kernels and keeps them on disk. Its zero value (with Dir
// set) is usable; it is safe for concurrent use by goroutines and by other
// processes sharing Dir.
type Cache struct {
	// Dir is the cache root; kernels live under Dir/kernels.
	Dir string
	// Progress receives one line per long step (package list update,
	// download, extraction). Nil discards them.
	Progress io.Writer
	// MaxAge is how long package lists and resolutions of a name to exact
	// packages are reused without asking the archive; 0 means DefaultMaxAge.
	// Within it a Get of a cached kernel does not touch the network.
	MaxAge time.Duration
	// Refresh makes Get update the package lists and resolve names again,
	// whatever their age (a newer Debian kernel is then fetched).
	Refresh bool
	// Offline forbids network access: Get uses what is cached, however old.
	Offline bool
	// Verify makes Get hash the kernel image and count the module files of
	// a cached kernel against its metadata, instead of checking sizes only.
	Verify bool
	// Mirror and SecurityMirror are the Debian archives; "" means
	// DefaultMirror and DefaultSecurityMirror.
	Mirror, SecurityMirror string
	// Keyring verifies the archive's signatures; "" means Debian's archive
	// keyring from the debian-archive-keyring package.
	Keyring string
	// OCIRepo, if set, is an OCI repository of kernel images laid out as
	// DefaultOCIRepo's (one tag per version) where names that Debian
	// lacks are looked for: "6.8" is OCIRepo:6.8. NewCache sets it.
	OCIRepo string

	insecureArchive bool   // tests: trust an unsigned local archive
	depmodMode      string // tests: force a modules.dep generator
	checkOff        *bool  // tests: as if the host's apt turned Valid-Until checks off (or on)

	mu    sync.Mutex
	stats Stats
}

// Stats counts what a Cache did over the network and on disk.
type Stats struct {
	Updates       int   // apt-get update runs
	Downloads     int   // packages downloaded
	DownloadBytes int64 // their bytes
	Extracts      int   // kernel trees extracted
}

// Stats returns the counts so far.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

func (c *Cache) count(f func(*Stats)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.stats)
}

// DefaultDir is the cache root: $VMTEST_CACHE_DIR, else
// $XDG_CACHE_HOME/skbstore-vmtest, else ~/.cache/skbstore-vmtest.
func DefaultDir() (string, error) {
	if d := os.Getenv(envCacheDir); d != "" {
		return filepath.Abs(d)
	}
	base, err := os.UserCacheDir() // $XDG_CACHE_HOME or ~/.cache
	if err != nil {
		return "", fmt.Errorf("kernel cache: set %s: %w", envCacheDir, err)
	}
	return filepath.Join(base, "skbstore-vmtest"), nil
}

// DefaultOCIRepo is where versions Debian lacks are looked for: cilium/ebpf's
// CI kernels.
const DefaultOCIRepo = "ghcr.io/cilium/ci-kernels"

// NewCache returns a Cache in DefaultDir that reports progress on stderr and
// takes OCIRepo from $VMTEST_OCI_REPO: DefaultOCIRepo when it is unset, no
// OCI source when it is set but empty.
func NewCache() (*Cache, error) {
	dir, err := DefaultDir()
	if err != nil {
		return nil, err
	}
	repo, set := os.LookupEnv(envOCIRepo)
	if !set {
		repo = DefaultOCIRepo
	}
	return &Cache{Dir: dir, Progress: os.Stderr, OCIRepo: repo}, nil
}

func (c *Cache) kernelsDir() string { return filepath.Join(c.Dir, "kernels") }

func (c *Cache) progress() io.Writer {
	if c.Progress == nil {
		return io.Discard
	}
	return c.Progress
}

// validUntilOff reports whether the host's apt configuration turns the
// Release files' Valid-Until check off.
func (c *Cache) validUntilOff() bool {
	if c.checkOff != nil {
		return *c.checkOff
	}
	return hostCheckOff()
}

func (c *Cache) logf(format string, args ...any) {
	fmt.Fprintf(c.progress(), "kernels: "+format+"\n", args...)
}

func (c *Cache) maxAge() time.Duration {
	if c.MaxAge > 0 {
		return c.MaxAge
	}
	return DefaultMaxAge
}

func (c *Cache) mirror() string {
	if c.Mirror != "" {
		return strings.TrimRight(c.Mirror, "/")
	}
	return DefaultMirror
}

func (c *Cache) securityMirror() string {
	if c.SecurityMirror != "" {
		return strings.TrimRight(c.SecurityMirror, "/")
	}
	return DefaultSecurityMirror
}

// Get returns the kernel a name stands for, fetching and verifying it if it
// is not cached yet. A name is a version ("6.1", "7.2-generic": see
// Available and Flavours) or an OCI tag, maybe followed by an architecture
// ("6.12/arm64": see Arches and SplitArch; without one it is DefaultArch),
// or a path to a local kernel (it contains a "/", and its image says its
// architecture).
func (c *Cache) Get(ctx context.Context, name string) (*Kernel, error) {
	s, err := parseName(name)
	if err != nil {
		return nil, err
	}
	if s.local != "" {
		return localKernel(name, s.local)
	}
	if c.Dir == "" {
		return nil, fmt.Errorf("fetch kernel %s: Cache.Dir is empty (use NewCache)", name)
	}
	if s.debian() {
		if series, ok := findSeries(s.version); ok {
			k, err := c.getDebian(ctx, s, series)
			if err != nil {
				return nil, fmt.Errorf("fetch kernel %s: %w", name, err)
			}
			return k, nil
		}
	}
	if !s.oci() || c.OCIRepo == "" {
		return nil, unknownVersionError(name, c.OCIRepo)
	}
	k, err := c.getOCI(ctx, s)
	if err != nil {
		debian := "Debian offers " + strings.Join(Available(), ", ")
		if s.source == SourceOCI {
			debian = "Debian not asked (oci:)"
		}
		return nil, fmt.Errorf("fetch kernel %s: %s; OCI %s: %w; point %s at a mirror of %s, or give a local kernel's path",
			name, debian, c.OCIRepo, err, envOCIRepo, DefaultOCIRepo)
	}
	return k, nil
}

// Resolve returns the exact Debian packages a version name stands for,
// updating the package lists if they are older than MaxAge, but downloads
// no package. Local paths resolve to nil.
func (c *Cache) Resolve(ctx context.Context, name string) ([]PackageRef, error) {
	s, err := parseName(name)
	if err != nil || s.local != "" {
		return nil, err
	}
	series, ok := findSeries(s.version)
	if !ok || !s.debian() {
		return nil, unknownVersionError(name, "")
	}
	repo, err := newAptRepo(c, series, s.arch)
	if err != nil {
		return nil, fmt.Errorf("resolve kernel %s: %w", name, err)
	}
	res, err := c.resolve(ctx, s, series, repo, time.Now(), nil)
	c.trimApt(repo)
	if err != nil {
		return nil, fmt.Errorf("resolve kernel %s: %w", name, err)
	}
	return res.Packages, nil
}

func (c *Cache) getDebian(ctx context.Context, s spec, series debSeries) (*Kernel, error) {
	start := time.Now()
	repo, err := newAptRepo(c, series, s.arch)
	if err != nil {
		return nil, err
	}
	// Warm path: a recent resolution and an intact tree; no apt, no network.
	if res, ok := c.readResolution(s.canonical(), repo.sourceID()); ok && !c.Refresh && (c.Offline || time.Since(res.ResolvedAt) < c.maxAge()) {
		if k, err := c.openTree(s, res); err == nil {
			return k, nil
		}
	}
	// Mirrors sometimes list a package they do not (yet or any more) serve:
	// then the next older one is the newest available.
	skip := map[string]bool{}
	for {
		res, err := c.resolve(ctx, s, series, repo, start, skip)
		if err != nil {
			return nil, err
		}
		k, err := c.fetch(ctx, s, res, repo)
		if !errors.Is(err, errNotDownloadable) || len(skip) >= maxSkipped {
			c.trimApt(repo)
			return k, err
		}
		main := res.Packages[0]
		c.logf("warning: %s %s is listed but cannot be downloaded (%v); trying the next older one", main.Name, main.Version, err)
		skip[main.Name+"="+main.Version] = true
	}
}

// trimApt shrinks the repo's apt state unless another Get is using it.
func (c *Cache) trimApt(repo *aptRepo) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	unlock, err := lockFile(ctx, c.lockPath(repo.lockName()), "", io.Discard)
	if err != nil {
		return
	}
	defer unlock()
	repo.trim()
}

// maxSkipped bounds how many listed-but-missing versions Get steps over.
// Eleven have been seen at once: bullseye-security listed the arm64
// kernels 5.10.0-39 to -46 (signed and unsigned) and served none of them,
// so 5.10/arm64 came from bullseye's 5.10.0-32. Each costs one request.
const maxSkipped = 16

// resolve finds the exact packages for a name, updating the package lists
// if they are older than MaxAge. One process at a time per series and
// architecture.
// Packages in skip ("name=version") are known not to be downloadable.
func (c *Cache) resolve(ctx context.Context, s spec, series debSeries, repo *aptRepo, start time.Time, skip map[string]bool) (resolution, error) {
	unlock, err := lockFile(ctx, c.lockPath(repo.lockName()), "to update the package lists of "+repo.label, c.progress())
	if err != nil {
		return resolution{}, err
	}
	defer unlock()

	old, haveOld := c.readResolution(s.canonical(), repo.sourceID())
	if haveOld && skip[old.Packages[0].Name+"="+old.Packages[0].Version] {
		haveOld = false
	}
	// Someone (maybe a concurrent Get) resolved it while we waited.
	if haveOld && (old.ResolvedAt.After(start) || (!c.Refresh && time.Since(old.ResolvedAt) < c.maxAge())) {
		return old, nil
	}
	if c.Offline {
		if haveOld {
			return old, nil
		}
		if !repo.hasLists() {
			return resolution{}, fmt.Errorf("offline, and %s was never fetched", s.canonical())
		}
	}
	if err := repo.setup(); err != nil {
		return resolution{}, fmt.Errorf("set up private apt in %s: %w", repo.dir, err)
	}
	var updateErr error
	age, fresh := repo.listsAge()
	if !c.Offline && (!fresh || age > c.maxAge() || (c.Refresh && age > time.Since(start))) {
		updateErr = c.updateLists(ctx, series, repo)
		if ctx.Err() != nil {
			return resolution{}, ctx.Err()
		}
	}
	res, err := c.resolveFromLists(ctx, s, series, repo, skip)
	switch {
	case err == nil && updateErr != nil:
		c.logf("warning: could not update the package lists (%v); using older lists", updateErr)
	case err != nil && updateErr != nil && haveOld:
		c.logf("warning: could not update the package lists (%v); using the resolution of %s", updateErr, old.ResolvedAt.Format(time.RFC3339))
		return old, nil
	case err != nil && updateErr != nil:
		return resolution{}, fmt.Errorf("%w (and updating the package lists failed: %v)", err, updateErr)
	case err != nil:
		return resolution{}, err
	}
	res.SourceID = repo.sourceID()
	if err := c.writeResolution(res); err != nil {
		return resolution{}, fmt.Errorf("record resolution: %w", err)
	}
	return res, nil
}

// updateLists runs apt-get update for the series, saying so on Progress.
// The caller holds the series' apt lock.
func (c *Cache) updateLists(ctx context.Context, series debSeries, repo *aptRepo) error {
	suites := make([]string, len(series.suites))
	for i, su := range series.suites {
		suites[i] = su.name
	}
	c.logf("updating Debian package lists for %s (%s)", repo.label, strings.Join(suites, ", "))
	t := time.Now()
	err := repo.update(ctx, c.validUntilOff(), func(msg string) { c.logf("warning: %s", msg) })
	c.count(func(st *Stats) { st.Updates++ })
	if err == nil {
		c.logf("updated package lists for %s in %.1fs", repo.label, time.Since(t).Seconds())
	}
	return err
}

// resolveFromLists picks the newest linux-image package of the series,
// flavour and architecture, plus the packages a split (7.x) kernel consists
// of.
func (c *Cache) resolveFromLists(ctx context.Context, s spec, series debSeries, repo *aptRepo, skip map[string]bool) (resolution, error) {
	if !repo.hasLists() {
		return resolution{}, errors.New("no Debian package lists (apt-get update never succeeded)")
	}
	names, err := repo.pkgnames(ctx, "linux-image-"+series.version)
	if err != nil {
		return resolution{}, err
	}
	re := imagePackageRE(series.version, s.flavour, s.arch)
	var matching []string
	for _, n := range names {
		if re.MatchString(n) {
			matching = append(matching, n)
		}
	}
	if len(matching) == 0 {
		return resolution{}, fmt.Errorf("the Debian package lists (%s) have no %s package", repo.suiteNames(), re)
	}
	sort.Strings(matching)
	stanzas, err := repo.show(ctx, matching...)
	if err != nil {
		return resolution{}, err
	}
	var image debPackage
	for _, p := range rankImages(stanzas) {
		if !skip[p.Package+"="+p.Version] {
			image = p
			break
		}
	}
	if image.Package == "" {
		return resolution{}, fmt.Errorf("no downloadable version of %s", strings.Join(matching, ", "))
	}
	pkgs := []debPackage{image}
	parts, err := splitParts(image)
	if err != nil {
		return resolution{}, err
	}
	if len(parts) > 0 {
		partNames := make([]string, 0, len(parts))
		for n := range parts {
			partNames = append(partNames, n)
		}
		sort.Strings(partNames)
		all, err := repo.show(ctx, partNames...)
		if err != nil {
			return resolution{}, err
		}
		for _, n := range partNames {
			found := false
			for _, p := range all {
				if p.Package == n && p.Version == parts[n] {
					pkgs = append(pkgs, p)
					found = true
					break
				}
			}
			if !found {
				return resolution{}, fmt.Errorf("%s %s needs %s %s, which the package lists do not have", image.Package, image.Version, n, parts[n])
			}
		}
	}
	res := resolution{Format: metaFormat, Name: s.canonical(), Key: treeKey(image.ref()), ResolvedAt: time.Now()}
	for _, p := range pkgs {
		res.Packages = append(res.Packages, p.ref())
	}
	return res, nil
}

// lockForFetch takes the tree's lock. If another process fetched the tree
// meanwhile, it returns that kernel with the lock released; otherwise it
// returns with the lock held and the staging area ready, for the caller to
// fetch and then unlock.
func (c *Cache) lockForFetch(ctx context.Context, s spec, res resolution, what string) (*Kernel, func(), error) {
	unlock, err := lockFile(ctx, c.lockPath(res.Key), "to fetch "+what, c.progress())
	if err != nil {
		return nil, nil, err
	}
	k, err := c.openTree(s, res)
	if err == nil {
		unlock()
		return k, nil, nil
	}
	if m, merr := readTreeMeta(c.treeDir(res.Key)); merr == nil && m.arch() != s.arch {
		unlock()
		return nil, nil, fmt.Errorf("%s is an %s kernel, not %s", what, m.arch(), s.arch)
	}
	if _, statErr := os.Stat(c.treeDir(res.Key)); statErr == nil {
		c.logf("cached %s is unusable (%v); fetching it again", res.Key, err)
	}
	if err := os.MkdirAll(c.tmpDir(), 0o755); err != nil {
		unlock()
		return nil, nil, err
	}
	c.cleanTmp()
	return nil, unlock, nil
}

// fetch makes sure the tree of res exists and is intact, downloading and
// extracting it if not. One process at a time per tree.
func (c *Cache) fetch(ctx context.Context, s spec, res resolution, repo *aptRepo) (*Kernel, error) {
	k, unlock, err := c.lockForFetch(ctx, s, res, res.Key)
	if k != nil || err != nil {
		return k, err
	}
	defer unlock()
	start := time.Now()
	debs, err := c.ensureDebs(ctx, repo, res.Packages)
	if err != nil {
		return nil, err
	}
	stage, err := os.MkdirTemp(c.tmpDir(), res.Key+".")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage) // gone already once installed
	c.logf("extracting %s", res.Key)
	t := time.Now()
	release, arch, err := assembleTree(ctx, stage, debs)
	if err != nil {
		return nil, err
	}
	if want := releaseFromPackage(res.Packages[0].Name); release != want {
		return nil, fmt.Errorf("%s holds kernel release %s, its name says %s", res.Packages[0].Name, release, want)
	}
	if arch != s.arch {
		return nil, fmt.Errorf("%s holds an %s kernel image, not %s", res.Packages[0].Name, arch, s.arch)
	}
	depmod, err := makeModulesDep(ctx, stage, release, c.depmodMode, c.progress())
	if err != nil {
		return nil, fmt.Errorf("make modules.dep for %s: %w", release, err)
	}
	m, err := describeTree(stage, release)
	if err != nil {
		return nil, err
	}
	m.Name, m.Key, m.Source, m.Packages, m.Depmod, m.Arch = s.canonical(), res.Key, SourceDebian, res.Packages, depmod, arch
	if err := writeMarker(stage, m); err != nil {
		return nil, err
	}
	if err := c.installTree(stage, res.Key); err != nil {
		return nil, fmt.Errorf("install kernel tree: %w", err)
	}
	c.count(func(st *Stats) { st.Extracts++ })
	c.logf("extracted %s in %.1fs (%s on disk, modules.dep by %s); ready in %.1fs",
		release, time.Since(t).Seconds(), mib(m.DiskBytes), depmod, time.Since(start).Seconds())
	return kernelFromTree(s.name, c.treeDir(res.Key), m), nil
}

// ensureDebs returns verified store paths of the packages, downloading the
// ones that are missing or fail verification.
func (c *Cache) ensureDebs(ctx context.Context, repo *aptRepo, refs []PackageRef) ([]string, error) {
	paths := make([]string, len(refs))
	var missing []debPackage
	var missingBytes int64
	for i, ref := range refs {
		paths[i] = c.debPath(ref.SHA256)
		err := verifyDeb(paths[i], ref)
		if err == nil {
			continue
		}
		if _, statErr := os.Stat(paths[i]); statErr == nil {
			c.logf("cached package %s is corrupt (%v); downloading it again", ref.Name, err)
			os.Remove(paths[i])
		}
		missing = append(missing, debPackage{Package: ref.Name, Version: ref.Version, SHA256: ref.SHA256, Size: ref.Size})
		missingBytes += ref.Size
	}
	if len(missing) == 0 {
		return paths, nil
	}
	if c.Offline {
		return nil, fmt.Errorf("offline, and %s is not cached", missing[0].Package)
	}
	if err := repo.setup(); err != nil {
		return nil, err
	}
	dl, err := os.MkdirTemp(c.tmpDir(), "download.")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dl)
	var names []string
	for _, p := range missing {
		names = append(names, p.Package+" "+p.Version)
	}
	// apt must not read the lists while a concurrent Get of another kernel
	// of this series updates them.
	unlock, err := lockFile(ctx, c.lockPath(repo.lockName()), "to use the package lists of "+repo.label, c.progress())
	if err != nil {
		return nil, err
	}
	c.logf("downloading %s (%s)", strings.Join(names, ", "), mib(missingBytes))
	t := time.Now()
	err = repo.download(ctx, dl, missing)
	unlock()
	if err != nil {
		return nil, err
	}
	c.count(func(st *Stats) { st.Downloads += len(missing); st.DownloadBytes += missingBytes })
	// Files are matched by hash, not by apt's file names: only bytes the
	// index vouches for get into the store.
	got, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	var found []string
	for _, f := range got {
		sum, size, err := fileSHA256(f)
		if err != nil {
			return nil, err
		}
		found = append(found, fmt.Sprintf("%s (%d bytes, SHA256 %s)", filepath.Base(f), size, sum))
		for _, p := range missing {
			if p.SHA256 == sum && p.Size == size {
				if err := os.MkdirAll(filepath.Dir(c.debPath(sum)), 0o755); err != nil {
					return nil, err
				}
				if err := os.Rename(f, c.debPath(sum)); err != nil {
					return nil, err
				}
			}
		}
	}
	for i, ref := range refs {
		if err := verifyDeb(paths[i], ref); err != nil {
			return nil, fmt.Errorf("downloaded %s %s does not match the package index (size %d, SHA256 %s); got %s",
				ref.Name, ref.Version, ref.Size, ref.SHA256, strings.Join(found, ", "))
		}
	}
	c.logf("downloaded %s in %.1fs", mib(missingBytes), time.Since(t).Seconds())
	return paths, nil
}

// describeTree measures a finished stage for its metadata.
func describeTree(stage, release string) (treeMeta, error) {
	m := treeMeta{Format: metaFormat, Release: release, ConfigSize: -1, FetchedAt: time.Now().UTC()}
	var err error
	if m.ImageSHA256, m.ImageSize, err = fileSHA256(filepath.Join(stage, treeImage)); err != nil {
		return m, err
	}
	if st, err := os.Stat(filepath.Join(stage, treeConfig)); err == nil {
		m.ConfigSize = st.Size()
	}
	modDir := filepath.Join(stage, treeModulesRel(release))
	st, err := os.Stat(filepath.Join(modDir, "modules.dep"))
	if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(modDir); errors.Is(err, os.ErrNotExist) {
			m.ModulesDepSize = -1 // a kernel without modules
			_, m.DiskBytes, err = treeStats(stage)
			return m, err
		}
	}
	if err != nil {
		return m, err
	}
	m.ModulesDepSize = st.Size()
	if m.ModuleFiles, m.ModulesBytes, err = treeStats(modDir); err != nil {
		return m, err
	}
	if _, m.DiskBytes, err = treeStats(stage); err != nil {
		return m, err
	}
	return m, nil
}

func writeMarker(dir string, m treeMeta) error {
	b, err := jsonIndent(m)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, treeMarker), b)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
