package kernels

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// debianKeyrings are tried in order for the archive's signing keys.
var debianKeyrings = []string{
	"/usr/share/keyrings/debian-archive-keyring.gpg",
	"/usr/share/keyrings/debian-archive-keyring.pgp",
}

// aptRepo is a private apt setup for one kernel series and architecture
// under the cache: its own apt.conf (read through APT_CONFIG, so none of the
// host's apt configuration, hooks or pinning apply), sources.list, lists
// and cache.
type aptRepo struct {
	dir     string
	arch    string // Debian architecture of the lists: "amd64", "arm64"
	label   string // for messages: "6.1", "6.1/arm64"
	sources string // sources.list content
}

// lockName names the lock that guards the repo's lists: "apt-6.1",
// "apt-6.1-arm64".
func (a *aptRepo) lockName() string { return "apt-" + filepath.Base(a.dir) }

// sourceID names the configured archive, so that a change of mirror or
// keyring invalidates lists and resolutions made from the old one.
func (a *aptRepo) sourceID() string {
	h := sha256.Sum256([]byte(a.sources))
	return hex.EncodeToString(h[:8])
}

// newAptRepo sets up (in memory) the private apt of a series for arch.
// amd64's lives in apt/<series> (as it did before other architectures),
// another's in apt/<series>-<arch>: the lists of one architecture are no
// use to another.
func newAptRepo(c *Cache, s debSeries, arch string) (*aptRepo, error) {
	if !slices.Contains(Arches(), arch) {
		return nil, fmt.Errorf("architecture %q: want one of %s", arch, strings.Join(Arches(), ", "))
	}
	opts := "arch=" + arch + " target=Packages pdiffs=no"
	if c.insecureArchive {
		opts += " trusted=yes" // tests: a local unsigned archive
	} else {
		keyring := c.Keyring
		if keyring == "" {
			for _, k := range debianKeyrings {
				if _, err := os.Stat(k); err == nil {
					keyring = k
					break
				}
			}
		}
		if keyring == "" {
			return nil, errors.New("no Debian archive keyring to verify packages with: install the debian-archive-keyring package (or set Cache.Keyring)")
		}
		opts += " signed-by=" + keyring
	}
	var b strings.Builder
	for _, suite := range s.suites {
		mirror := c.mirror()
		if suite.security {
			mirror = c.securityMirror()
		}
		fmt.Fprintf(&b, "deb [%s] %s %s main\n", opts, mirror, suite.name)
	}
	dir := s.version
	if arch != DefaultArch {
		dir += "-" + arch
	}
	return &aptRepo{dir: filepath.Join(c.kernelsDir(), "apt", dir), arch: arch, label: s.version + archSuffix(arch), sources: b.String()}, nil
}

// setup writes the private configuration.
func (a *aptRepo) setup() error {
	for _, d := range []string{"empty", "lists/partial", "cache/archives/partial", "state"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return err
		}
	}
	if strings.ContainsAny(a.dir, "\"\n") {
		return fmt.Errorf("cache directory %q: apt cannot use a path with quotes or newlines", a.dir)
	}
	conf := fmt.Sprintf(`Dir::Etc::Parts "%[1]s/empty";
Dir::Etc::Main "/dev/null";
Dir::Etc::SourceList "%[1]s/sources.list";
Dir::Etc::SourceParts "%[1]s/empty";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "%[1]s/empty";
Dir::State "%[1]s/state";
Dir::State::Lists "%[1]s/lists";
Dir::State::status "/dev/null";
Dir::Cache "%[1]s/cache";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
APT::Architecture "%[2]s";
APT::Architectures { "%[2]s"; };
`, a.dir, a.arch) + hostAptSettings()
	if os.Geteuid() == 0 {
		// apt would drop to _apt, which cannot write into a user's cache.
		conf += "APT::Sandbox::User \"root\";\n"
	}
	if err := writeIfChanged(filepath.Join(a.dir, "apt.conf"), conf); err != nil {
		return err
	}
	return writeIfChanged(filepath.Join(a.dir, "sources.list"), a.sources)
}

func writeIfChanged(path, content string) error {
	if b, err := os.ReadFile(path); err == nil && string(b) == content {
		return nil
	}
	return writeFileAtomic(path, []byte(content))
}

func (a *aptRepo) stampPath() string { return filepath.Join(a.dir, "updated") }

// listsAge is how long ago the lists were last updated from the current
// sources; ok is false if never.
func (a *aptRepo) listsAge() (age time.Duration, ok bool) {
	b, err := os.ReadFile(a.stampPath())
	if err != nil || strings.TrimSpace(string(b)) != a.sourceID() {
		return 0, false
	}
	st, err := os.Stat(a.stampPath())
	if err != nil {
		return 0, false
	}
	return time.Since(st.ModTime()), true
}

// run runs an apt tool with the private configuration.
func (a *aptRepo) run(ctx context.Context, dir, tool string, args ...string) (string, error) {
	path, err := exec.LookPath(tool)
	if err != nil {
		return "", fmt.Errorf("%s not found: fetching Debian kernels needs apt (install the apt package, or use a local kernel path)", tool)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "APT_CONFIG="+filepath.Join(a.dir, "apt.conf"), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, tail(stderr.String()))
	}
	return stdout.String() + stderr.String(), nil
}

// update refreshes the package lists; on full success it stamps them.
//
// apt checks the Release files' Valid-Until dates, so a mirror that serves
// an old (or replayed) index is refused. Only where the host's own apt
// configuration turns that check off (a frozen or lagging mirror, as on some
// build machines) does the update go on without it, and then warn says so.
func (a *aptRepo) update(ctx context.Context, checkOff bool, warn func(string)) error {
	out, err := a.run(ctx, a.dir, "apt-get", "-q", "update")
	if err == nil {
		err = updateProblem(out)
	}
	if err != nil && expiredRE.MatchString(err.Error()) {
		what := expiredRE.FindString(err.Error())
		if !checkOff {
			return fmt.Errorf("%s: the mirror serves an out-of-date index (or replays an old one), which apt refuses; "+
				"use an up-to-date mirror, or, if you trust this one, turn the check off for the whole machine with "+
				"Acquire::Check-Valid-Until \"false\" in /etc/apt/apt.conf.d", what)
		}
		out, err = a.run(ctx, a.dir, "apt-get", "-q", "-o", "Acquire::Check-Valid-Until=false", "update")
		if err == nil {
			err = updateProblem(out)
		}
		if err == nil {
			warn(fmt.Sprintf("%s; this machine's apt configuration turns the date check off (Acquire::Check-Valid-Until \"false\"), "+
				"so the index is used: an old or replayed one would not be noticed", what))
		}
	}
	if err != nil {
		return err
	}
	return writeFileAtomic(a.stampPath(), []byte(a.sourceID()+"\n"))
}

// expiredRE matches apt's complaint about a Release file past Valid-Until.
var expiredRE = regexp.MustCompile(`Release file for \S+ is expired \([^)]*\)`)

// updateProblem finds the failures apt-get update reports with exit 0 (it
// keeps the old lists of a source it could not fetch).
func updateProblem(out string) error {
	for _, bad := range []string{"\nE: ", "\nW: Failed to fetch", "Some index files failed to download"} {
		if strings.Contains("\n"+out, bad) {
			return fmt.Errorf("apt-get update: %s", tail(out))
		}
	}
	return nil
}

// hasLists reports whether any update ever fetched package lists.
func (a *aptRepo) hasLists() bool {
	if _, ok := a.listsAge(); ok {
		return true // maybe empty lists, but from a successful update
	}
	m, _ := filepath.Glob(filepath.Join(a.dir, "lists", "*_Packages*"))
	return len(m) > 0
}

// pkgnames lists the real packages whose names start with prefix.
func (a *aptRepo) pkgnames(ctx context.Context, prefix string) ([]string, error) {
	out, err := a.run(ctx, a.dir, "apt-cache", "pkgnames", prefix)
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// show returns every version of the named packages that the lists hold.
func (a *aptRepo) show(ctx context.Context, names ...string) ([]debPackage, error) {
	out, err := a.run(ctx, a.dir, "apt-cache", append([]string{"show"}, names...)...)
	if err != nil {
		return nil, err
	}
	return parseStanzas(out)
}

// download fetches exact package versions into dir.
func (a *aptRepo) download(ctx context.Context, dir string, pkgs []debPackage) error {
	args := []string{"-q", "download"}
	for _, p := range pkgs {
		args = append(args, p.Package+"="+p.Version)
	}
	_, err := a.run(ctx, dir, "apt-get", args...)
	if err != nil && notFoundRE.MatchString(err.Error()) {
		return fmt.Errorf("%w: %w", errNotDownloadable, err)
	}
	return err
}

// errNotDownloadable marks a download the archive answered with 404.
var errNotDownloadable = errors.New("package not on the archive")

var notFoundRE = regexp.MustCompile(`\b404\b`)

// suiteNames lists the suites of the sources, for messages.
func (a *aptRepo) suiteNames() string {
	var s []string
	for _, line := range strings.Split(strings.TrimSpace(a.sources), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			s = append(s, f[len(f)-2])
		}
	}
	return strings.Join(s, ", ")
}

// inheritedAptKeys are the host's apt settings a private configuration
// keeps: how to reach the network, which an administrator sets for the whole
// machine (a proxy). The host's sources, hooks and pinning are not kept, nor
// its date checks: Release files are checked unless they fail the check and
// the host turns it off (see aptRepo.update).
var inheritedAptKeys = []string{
	"acquire::http::proxy", "acquire::https::proxy", "acquire::ftp::proxy",
	"acquire::http::proxy-auto-detect", "acquire::https::proxy-auto-detect",
	"acquire::http::timeout", "acquire::https::timeout", "acquire::retries",
	"acquire::forceipv4", "acquire::forceipv6",
}

var (
	hostAptMu   sync.Mutex
	hostAptConf *string // cached once apt-config answered
)

// hostAptSettings returns the inherited settings as apt.conf lines.
func hostAptSettings() string {
	hostAptMu.Lock()
	defer hostAptMu.Unlock()
	if hostAptConf != nil {
		return *hostAptConf
	}
	out, err := exec.Command("apt-config", "dump").Output()
	if err != nil {
		return ""
	}
	var b strings.Builder
	for _, line := range strings.Split(string(out), "\n") {
		key, _, _ := strings.Cut(line, " ")
		key = strings.ToLower(key)
		for _, k := range inheritedAptKeys {
			if key == k || strings.HasPrefix(key, k+"::") {
				b.WriteString(line + "\n")
				break
			}
		}
	}
	conf := b.String()
	hostAptConf = &conf
	return conf
}

var hostCheckOff = sync.OnceValue(func() bool {
	out, err := exec.Command("apt-config", "dump", "Acquire::Check-Valid-Until").Output()
	if err != nil {
		return false
	}
	_, v, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	switch strings.ToLower(strings.Trim(v, "\";")) {
	case "false", "no", "0", "off":
		return true
	}
	return false
})

// trim drops apt's binary package cache (50 MB for sid): it is rebuilt in
// half a second, and only resolving a name needs it, about once a MaxAge.
func (a *aptRepo) trim() {
	os.Remove(filepath.Join(a.dir, "cache", "pkgcache.bin"))
}
