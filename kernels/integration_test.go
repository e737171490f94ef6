package kernels

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// syncBuffer is a goroutine-safe progress writer for tests.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// progressLogger copies progress lines to the test log as well.
type progressLogger struct {
	t   testing.TB
	buf *syncBuffer
}

func (p progressLogger) Write(b []byte) (int, error) {
	p.t.Log(strings.TrimRight(string(b), "\n"))
	return p.buf.Write(b)
}

// integrationDir is where the real-network tests cache kernels: a fresh
// temporary directory, unless VMTEST_TEST_CACHE_DIR names one to reuse.
func integrationDir(t *testing.T) string {
	if d := os.Getenv("VMTEST_TEST_CACHE_DIR"); d != "" {
		return d
	}
	return t.TempDir()
}

func TestIntegrationDebian61(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads a kernel from Debian's archive")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	buf := &syncBuffer{}
	c := &Cache{Dir: integrationDir(t), Progress: progressLogger{t, buf}}

	start := time.Now()
	k, err := c.Get(ctx, "6.1")
	require.NoError(t, err)
	cold := time.Since(start)
	st := c.Stats()
	t.Logf("cold Get: %v, %d packages downloaded (%s), release %s", cold, st.Downloads, mib(st.DownloadBytes), k.Release)

	assert.Equal(t, "6.1", k.Name)
	assert.Equal(t, SourceDebian, k.Source)
	require.Len(t, k.Packages, 1)
	assert.Regexp(t, `^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$`, k.Packages[0].Name)
	assert.Equal(t, releaseFromPackage(k.Packages[0].Name), k.Release)
	assert.True(t, filepath.IsAbs(k.Image))
	arch, err := ImageArch(k.Image)
	require.NoError(t, err)
	assert.Equal(t, "amd64", arch, "image has the HdrS magic")
	rel, err := imageRelease(k.Image)
	require.NoError(t, err)
	assert.Equal(t, k.Release, rel)

	v, ok, err := k.ConfigValue("CONFIG_DEBUG_INFO_BTF")
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, "y", v)

	mods, err := k.ResolveModules("veth")
	require.NoError(t, err)
	require.NotEmpty(t, mods)
	last := mods[len(mods)-1]
	assert.Equal(t, "veth", last.Name)
	assert.Equal(t, "veth.ko", filepath.Base(last.Path))
	assert.FileExists(t, last.Path)

	set, err := k.ResolveModuleSet("act_mirred", "sch_ingress", "virtio_pci", "veth")
	require.NoError(t, err)
	for _, m := range set.Load {
		t.Logf("load %s", m.RelPath)
	}
	t.Logf("builtin: %v", set.Builtin)

	// Warm: no apt, no download, no extraction; milliseconds.
	before := c.Stats()
	logLen := len(buf.String())
	start = time.Now()
	k2, err := c.Get(ctx, "6.1-cloud")
	require.NoError(t, err)
	warm := time.Since(start)
	t.Logf("warm Get: %v", warm)
	assert.Equal(t, before, c.Stats(), "warm Get must not update, download or extract")
	assert.Empty(t, buf.String()[logLen:], "warm Get must print nothing")
	assert.Equal(t, k.Image, k2.Image)
	assert.Less(t, warm, 200*time.Millisecond)

	checkRealKernel(t, k)

	list, err := c.List()
	require.NoError(t, err)
	require.NotEmpty(t, list)
	for _, ck := range list {
		t.Logf("cached: %s %s %s tree %s debs %s", ck.Name, ck.Release, ck.Version, mib(ck.TreeSize), mib(ck.DebSize))
	}
}

// TestIntegrationDebianArm64 fetches an arm64 kernel: a plain Image whose
// banner names the release its package does.
func TestIntegrationDebianArm64(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads a kernel from Debian's archive")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := &Cache{Dir: integrationDir(t), Progress: progressLogger{t, &syncBuffer{}}}
	k, err := c.Get(ctx, "6.12/arm64")
	require.NoError(t, err)
	assert.Equal(t, "arm64", k.Arch)
	require.NotEmpty(t, k.Packages)
	assert.Regexp(t, `^linux-image-6\.12\.[0-9]+\+deb[0-9.]+-cloud-arm64(-unsigned)?$`, k.Packages[0].Name)
	require.NoError(t, CheckImage(k.Image))
	for _, opt := range []string{"BPF_JIT", "DEBUG_INFO_BTF", "SERIAL_AMBA_PL011_CONSOLE", "VIRTIO_PCI"} {
		v, _, err := k.ConfigValue(opt)
		require.NoError(t, err)
		assert.Equal(t, "y", v, opt)
	}
	checkRealKernel(t, k)
}

// TestIntegrationResolveAll checks that Debian has a package for every
// built-in version and architecture, from package lists only. With
// VMTEST_TEST_FETCH_ALL=1 it also fetches each kernel and checks it.
func TestIntegrationResolveAll(t *testing.T) {
	if testing.Short() {
		t.Skip("reads Debian's package lists over the network")
	}
	fetch := os.Getenv("VMTEST_TEST_FETCH_ALL") == "1"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	c := &Cache{Dir: integrationDir(t), Progress: progressLogger{t, &syncBuffer{}}}
	var names []string
	for _, arch := range Arches() {
		for _, v := range Available() {
			names = append(names, v+archSuffix(arch))
		}
	}
	for _, v := range names {
		t.Run(v, func(t *testing.T) {
			start := time.Now()
			pkgs, err := c.Resolve(ctx, v)
			require.NoError(t, err)
			require.NotEmpty(t, pkgs)
			for _, p := range pkgs {
				t.Logf("%s %s (%s) sha256 %s", p.Name, p.Version, mib(p.Size), p.SHA256)
			}
			base, arch := SplitArch(v)
			if arch == "" {
				arch = DefaultArch
			}
			assert.True(t, strings.HasPrefix(pkgs[0].Name, "linux-image-"+base), pkgs[0].Name)
			assert.Contains(t, pkgs[0].Name, "-cloud-"+arch, pkgs[0].Name)
			t.Logf("resolved in %v", time.Since(start))
			if !fetch {
				return
			}
			before := c.Stats()
			start = time.Now()
			k, err := c.Get(ctx, v)
			require.NoError(t, err)
			after := c.Stats()
			t.Logf("fetched %s in %v: downloaded %s", k.Release, time.Since(start), mib(after.DownloadBytes-before.DownloadBytes))
			checkRealKernel(t, k)
		})
	}
}

// checkRealKernel checks what every Debian kernel must offer the runner.
func checkRealKernel(t *testing.T, k *Kernel) {
	t.Helper()
	arch, err := ImageArch(k.Image)
	require.NoError(t, err)
	assert.Equal(t, k.Arch, arch)
	require.NoError(t, CheckImage(k.Image))
	rel, err := imageRelease(k.Image)
	require.NoError(t, err)
	assert.Equal(t, k.Release, rel)
	v, _, err := k.ConfigValue("BPF_SYSCALL")
	require.NoError(t, err)
	assert.Equal(t, "y", v)
	set, err := k.ResolveModuleSet("veth", "act_mirred", "sch_ingress")
	require.NoError(t, err)
	assert.Len(t, append(moduleNames(set.Load), set.Builtin...), 3+len(set.Load)-countRequested(set.Load, "veth", "act_mirred", "sch_ingress"))
	var dirs, files int
	filepath.WalkDir(k.ModulesDir, func(_ string, d os.DirEntry, _ error) error {
		if d.IsDir() {
			dirs++
		} else {
			files++
		}
		return nil
	})
	t.Logf("%s: %d module dir files; load %v builtin %v", k.Release, files, moduleNames(set.Load), set.Builtin)

	// The load order must be modprobe's.
	if modprobe, err := exec.LookPath("modprobe"); err == nil || fileExists("/usr/sbin/modprobe") {
		if err != nil {
			modprobe = "/usr/sbin/modprobe"
		}
		root := filepath.Dir(filepath.Dir(filepath.Dir(k.ModulesDir)))
		for _, name := range []string{"virtio_net", "virtio_pci", "act_mirred", "veth", "sch_ingress", "cls_bpf", "nf_tables", "xfs"} {
			out, err := exec.Command(modprobe, "-d", root, "-S", k.Release, "--show-depends", name).CombinedOutput()
			if err != nil {
				t.Logf("modprobe %s: %v: %s", name, err, out)
				continue
			}
			var want []string
			for _, line := range strings.Split(string(out), "\n") {
				if f := strings.Fields(line); len(f) >= 2 && f[0] == "insmod" {
					want = append(want, f[1])
				}
			}
			mods, err := k.ResolveModules(name)
			require.NoError(t, err)
			var got []string
			for _, m := range mods {
				got = append(got, m.Path)
			}
			// modprobe also loads soft dependencies (libcrc32c's "pre:
			// crc32c"), which are not in modules.dep: compare the rest.
			var hard, soft []string
			for _, w := range want {
				if slices.Contains(got, w) {
					hard = append(hard, w)
				} else {
					soft = append(soft, filepath.Base(w))
				}
			}
			assert.Equal(t, hard, got, "load order of %s", name)
			if len(soft) > 0 {
				t.Logf("%s: modprobe also loads soft dependencies %v", name, soft)
			}
		}
	}

	// The pure-Go modules.dep must agree with kmod's.
	if _, err := findDepmod(); err == nil {
		out := t.TempDir()
		start := time.Now()
		require.NoError(t, builtinDepmod(context.Background(), k.ModulesDir, out))
		t.Logf("builtin modules.dep in %v", time.Since(start))
		assert.Equal(t, readDepSets(t, filepath.Join(k.ModulesDir, "modules.dep")), readDepSets(t, filepath.Join(out, "modules.dep")))
	}
}

func moduleNames(ms []Module) []string {
	var n []string
	for _, m := range ms {
		n = append(n, m.Name)
	}
	return n
}

func countRequested(ms []Module, names ...string) int {
	n := 0
	for _, m := range ms {
		for _, want := range names {
			if m.Name == want {
				n++
			}
		}
	}
	return n
}

// readDepSets reads modules.dep as module -> sorted dependency list.
func readDepSets(t *testing.T, path string) map[string]string {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		mod, deps, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(deps)
		slices.Sort(f)
		m[mod] = strings.Join(f, " ")
	}
	return m
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
