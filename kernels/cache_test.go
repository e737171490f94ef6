package kernels

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The helper process mode of the test binary: Get one kernel from a fake
// archive and print it as JSON (see TestGetConcurrentProcesses).
const helperEnv = "KERNELS_TEST_HELPER_URL"

func TestMain(m *testing.M) {
	if url := os.Getenv(helperEnv); url != "" {
		os.Exit(helperGet(url, os.Getenv("KERNELS_TEST_HELPER_DIR"), os.Getenv("KERNELS_TEST_HELPER_NAME")))
	}
	os.Exit(m.Run())
}

func helperGet(url, dir, name string) int {
	c := &Cache{Dir: dir, Mirror: url + "/debian", SecurityMirror: url + "/debian-security",
		insecureArchive: true, depmodMode: depmodBuiltin, Progress: os.Stderr}
	k, err := c.Get(context.Background(), name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(k)
	return 0
}

var testMods = []fakeMod{
	{rel: "kernel/drivers/net/veth.ko", depends: ""},
	{rel: "kernel/net/sched/act_mirred.ko", depends: "act_core"},
	{rel: "kernel/net/sched/act_core.ko", depends: "nf-base"},
	{rel: "kernel/net/netfilter/nf-base.ko", depends: ""},
}

// archive61 is a fake archive with two 6.1 kernels (the newer in security).
func archive61(t *testing.T) *fakeArchive {
	a := newFakeArchive(t)
	a.addKernel("bookworm", "6.1.0-40-cloud-amd64", "6.1.150-1", false, testMods, []string{"kernel/net/sched/sch_ingress.ko"})
	a.addKernel("bookworm-security", "6.1.0-41-cloud-amd64", "6.1.160-1", false, testMods, []string{"kernel/net/sched/sch_ingress.ko"})
	a.addKernel("bookworm", "6.1.0-41-amd64", "6.1.160-1", false, testMods, nil) // generic flavour
	return a
}

func TestGetColdWarm(t *testing.T) {
	a := archive61(t)
	c := a.cache(t.TempDir())
	progress := &syncBuffer{}
	c.Progress = progress
	ctx := context.Background()

	k, err := c.Get(ctx, "6.1")
	require.NoError(t, err)
	assert.Equal(t, "6.1", k.Name)
	assert.Equal(t, "6.1.0-41-cloud-amd64", k.Release)
	assert.Equal(t, SourceDebian, k.Source)
	require.Len(t, k.Packages, 1)
	assert.Equal(t, "linux-image-6.1.0-41-cloud-amd64-unsigned", k.Packages[0].Name)
	assert.Equal(t, "6.1.160-1", k.Packages[0].Version)
	arch, err := ImageArch(k.Image)
	require.NoError(t, err)
	assert.Equal(t, "amd64", arch)
	assert.Equal(t, filepath.Join(filepath.Dir(k.Image), "lib/modules/6.1.0-41-cloud-amd64"), k.ModulesDir)
	v, ok, err := k.ConfigValue("DEBUG_INFO_BTF")
	require.NoError(t, err)
	assert.True(t, ok)
	assert.Equal(t, "y", v)
	for _, step := range []string{"updating Debian package lists", "downloading", "extracting"} {
		assert.Contains(t, progress.String(), step)
	}

	mods, err := k.ResolveModules("act_mirred", "veth")
	require.NoError(t, err)
	assert.Equal(t, []string{"nf_base", "act_core", "act_mirred", "veth"}, moduleNames(mods))
	assert.Equal(t, "kernel/net/netfilter/nf-base.ko", mods[0].RelPath)
	set, err := k.ResolveModuleSet("sch_ingress", "veth")
	require.NoError(t, err)
	assert.Equal(t, []string{"sch_ingress"}, set.Builtin)

	st := c.Stats()
	assert.Equal(t, Stats{Updates: 1, Downloads: 1, DownloadBytes: k.Packages[0].Size, Extracts: 1}, st)
	assert.Equal(t, 1, a.count(".deb"))

	// Warm, from a new Cache as another process would: no request at all.
	before := len(a.requests)
	reqs := a.count("/")
	c2 := a.cache(c.Dir)
	start := time.Now()
	k2, err := c2.Get(ctx, "6.1-cloud")
	require.NoError(t, err)
	t.Logf("warm Get took %v", time.Since(start))
	assert.Equal(t, reqs, a.count("/"), "warm Get made requests")
	assert.Equal(t, before, len(a.requests))
	assert.Equal(t, Stats{}, c2.Stats())
	assert.Equal(t, k.Image, k2.Image)
	assert.Equal(t, k.Packages, k2.Packages)
	assert.Equal(t, "6.1-cloud", k2.Name)

	// The generic flavour is another package and another tree.
	g, err := c2.Get(ctx, "6.1-generic")
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-41-amd64", g.Release)
	assert.Equal(t, "linux-image-6.1.0-41-amd64-unsigned", g.Packages[0].Name)

	list, err := c2.List()
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, "6.1", list[0].Name)
	assert.Equal(t, "6.1.0-41-cloud-amd64", list[0].Release)
	assert.Equal(t, "6.1.160-1", list[0].Version)
	assert.Positive(t, list[0].TreeSize)
	assert.Equal(t, k.Packages[0].Size, list[0].DebSize)
	assert.Equal(t, "6.1-generic", list[1].Name)
}

func TestGetSplitKernel(t *testing.T) {
	a := newFakeArchive(t)
	mods := []fakeMod{
		{rel: "kernel/drivers/net/veth.ko.xz"},
		{rel: "kernel/net/sched/act_mirred.ko.zst", depends: "nf_base"},
		{rel: "kernel/net/netfilter/nf_base.ko.gz"},
	}
	a.addKernel("sid", "7.2.9+deb14-cloud-amd64", "7.2.9-1", true, mods, nil)
	a.addKernel("sid", "7.2.13+deb14-cloud-amd64", "7.2.13-1", true, mods, nil)
	c := a.cache(t.TempDir())
	k, err := c.Get(context.Background(), "7.2")
	require.NoError(t, err)
	assert.Equal(t, "7.2.13+deb14-cloud-amd64", k.Release)
	var names []string
	for _, p := range k.Packages {
		names = append(names, p.Name+"="+p.Version)
	}
	assert.Equal(t, []string{
		"linux-image-7.2.13+deb14-cloud-amd64=7.2.13-1",
		"linux-base-7.2.13+deb14-cloud-amd64=7.2.13-1",
		"linux-binary-7.2.13+deb14-cloud-amd64=7.2.13-1",
		"linux-modules-7.2.13+deb14-cloud-amd64=7.2.13-1",
	}, names)
	assert.FileExists(t, k.Image)
	assert.NoFileExists(t, filepath.Join(k.ModulesDir, "vmlinuz"), "image moved out of the modules dir")
	assert.FileExists(t, k.Config)
	mods2, err := k.ResolveModules("act_mirred", "veth")
	require.NoError(t, err)
	assert.Equal(t, []string{"nf_base", "act_mirred", "veth"}, moduleNames(mods2))
	assert.True(t, strings.HasSuffix(mods2[1].Path, "act_mirred.ko.zst"))
	assert.Equal(t, 4, a.count(".deb"))
}

// corruptions are ways a cache entry goes bad; each must lead to a fetch
// that repairs it, re-downloading only if the stored package went bad.
func TestGetRepairsCorruptEntry(t *testing.T) {
	for _, tc := range []struct {
		name       string
		verify     bool
		corrupt    func(t *testing.T, c *Cache, k *Kernel)
		redownload bool
	}{
		{name: "missing marker", corrupt: func(t *testing.T, c *Cache, k *Kernel) {
			require.NoError(t, os.Remove(filepath.Join(filepath.Dir(k.Image), treeMarker)))
		}},
		{name: "garbage marker", corrupt: func(t *testing.T, c *Cache, k *Kernel) {
			require.NoError(t, os.WriteFile(filepath.Join(filepath.Dir(k.Image), treeMarker), []byte("{"), 0o644))
		}},
		{name: "truncated vmlinuz", corrupt: func(t *testing.T, c *Cache, k *Kernel) {
			require.NoError(t, os.Truncate(k.Image, 1000))
		}},
		{name: "missing vmlinuz", corrupt: func(t *testing.T, c *Cache, k *Kernel) {
			require.NoError(t, os.Remove(k.Image))
		}},
		{name: "missing modules.dep", corrupt: func(t *testing.T, c *Cache, k *Kernel) {
			require.NoError(t, os.Remove(filepath.Join(k.ModulesDir, "modules.dep")))
		}},
		{name: "whole tree gone", corrupt: func(t *testing.T, c *Cache, k *Kernel) {
			require.NoError(t, os.RemoveAll(filepath.Dir(k.Image)))
		}},
		{name: "flipped image byte, deep verify", verify: true, corrupt: func(t *testing.T, c *Cache, k *Kernel) {
			f, err := os.OpenFile(k.Image, os.O_RDWR, 0)
			require.NoError(t, err)
			_, err = f.WriteAt([]byte{0xff}, 0x1000)
			require.NoError(t, err)
			require.NoError(t, f.Close())
		}},
		{name: "lost module, deep verify", verify: true, corrupt: func(t *testing.T, c *Cache, k *Kernel) {
			require.NoError(t, os.Remove(filepath.Join(k.ModulesDir, "kernel/drivers/net/veth.ko")))
		}},
		{name: "bad deb sha and no marker", redownload: true, corrupt: func(t *testing.T, c *Cache, k *Kernel) {
			deb := c.debPath(k.Packages[0].SHA256)
			f, err := os.OpenFile(deb, os.O_RDWR, 0)
			require.NoError(t, err)
			_, err = f.WriteAt([]byte("garbage"), 100)
			require.NoError(t, err)
			require.NoError(t, f.Close())
			require.NoError(t, os.Remove(filepath.Join(filepath.Dir(k.Image), treeMarker)))
		}},
		{name: "truncated deb and no marker", redownload: true, corrupt: func(t *testing.T, c *Cache, k *Kernel) {
			require.NoError(t, os.Truncate(c.debPath(k.Packages[0].SHA256), 10))
			require.NoError(t, os.Remove(filepath.Join(filepath.Dir(k.Image), treeMarker)))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := archive61(t)
			c := a.cache(t.TempDir())
			c.Verify = tc.verify
			progress := &syncBuffer{}
			c.Progress = progress
			ctx := context.Background()
			k, err := c.Get(ctx, "6.1")
			require.NoError(t, err)
			want, _, err := fileSHA256(k.Image)
			require.NoError(t, err)

			tc.corrupt(t, c, k)
			k2, err := c.Get(ctx, "6.1")
			require.NoError(t, err)
			assert.Equal(t, 2, c.Stats().Extracts, "re-extracted")
			wantDownloads := 1
			if tc.redownload {
				wantDownloads = 2
			}
			assert.Equal(t, wantDownloads, a.count(".deb"), "downloads")
			got, _, err := fileSHA256(k2.Image)
			require.NoError(t, err)
			assert.Equal(t, want, got, "image restored")
			assert.FileExists(t, filepath.Join(k2.ModulesDir, "kernel/drivers/net/veth.ko"))
			_, err = k2.ResolveModules("veth")
			require.NoError(t, err)
			t.Log(progress.String())
		})
	}
}

func TestGetSkipsUndownloadableVersion(t *testing.T) {
	a := archive61(t)
	p := a.addKernel("bookworm-security", "6.1.0-42-cloud-amd64", "6.1.170-1", false, testMods, nil)
	a.setMissing(p[0].file)
	c := a.cache(t.TempDir())
	progress := &syncBuffer{}
	c.Progress = progress
	k, err := c.Get(context.Background(), "6.1")
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-41-cloud-amd64", k.Release, "next older one")
	assert.Contains(t, progress.String(), "cannot be downloaded")

	// The resolution now points at what was fetched: warm Get stays offline.
	reqs := a.count("/")
	k2, err := a.cache(c.Dir).Get(context.Background(), "6.1")
	require.NoError(t, err)
	assert.Equal(t, k.Image, k2.Image)
	assert.Equal(t, reqs, a.count("/"))
}

func TestGetRefreshAndMaxAge(t *testing.T) {
	a := archive61(t)
	dir := t.TempDir()
	ctx := context.Background()
	k, err := a.cache(dir).Get(ctx, "6.1")
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-41-cloud-amd64", k.Release)
	a.addKernel("bookworm-security", "6.1.0-42-cloud-amd64", "6.1.170-1", false, testMods, nil)

	// Within MaxAge a Get does not see the new kernel.
	c := a.cache(dir)
	k, err = c.Get(ctx, "6.1")
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-41-cloud-amd64", k.Release)
	assert.Equal(t, 0, c.Stats().Updates)

	// Refresh updates the lists and fetches the newer kernel.
	c = a.cache(dir)
	c.Refresh = true
	k, err = c.Get(ctx, "6.1")
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-42-cloud-amd64", k.Release)
	assert.Equal(t, 1, c.Stats().Updates)

	// Past MaxAge, a Get updates by itself.
	a.addKernel("bookworm-security", "6.1.0-43-cloud-amd64", "6.1.180-1", false, testMods, nil)
	time.Sleep(20 * time.Millisecond)
	c = a.cache(dir)
	c.MaxAge = 10 * time.Millisecond
	k, err = c.Get(ctx, "6.1")
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-43-cloud-amd64", k.Release)
	assert.Equal(t, 1, c.Stats().Updates)

	// Offline: whatever is cached, however old, and no request.
	reqs := a.count("/")
	c = a.cache(dir)
	c.MaxAge = time.Nanosecond
	c.Offline = true
	k, err = c.Get(ctx, "6.1")
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-43-cloud-amd64", k.Release)
	assert.Equal(t, reqs, a.count("/"))
	_, err = c.Get(ctx, "6.12")
	require.ErrorContains(t, err, "offline")

	// All three kernels are cached; the lists were updated twice more.
	list, err := c.List()
	require.NoError(t, err)
	assert.Len(t, list, 3)
}

func TestGetArchiveUnreachable(t *testing.T) {
	a := archive61(t)
	dir := t.TempDir()
	ctx := context.Background()
	k, err := a.cache(dir).Get(ctx, "6.1")
	require.NoError(t, err)
	a.srv.Close()

	// Stale but cached: a failed update falls back to what is cached.
	c := a.cache(dir)
	progress := &syncBuffer{}
	c.Progress = progress
	c.MaxAge = time.Nanosecond
	k2, err := c.Get(ctx, "6.1")
	require.NoError(t, err)
	assert.Equal(t, k.Image, k2.Image)
	assert.Contains(t, progress.String(), "warning: could not update")

	// Never fetched: a clear error.
	_, err = c.Get(ctx, "7.2")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "fetch kernel 7.2")
	assert.Contains(t, err.Error(), "apt-get")
}

func TestGetNoSuchPackage(t *testing.T) {
	a := archive61(t)
	_, err := a.cache(t.TempDir()).Get(context.Background(), "6.12-rt")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "have no ^linux-image-6\\.12")
}

func TestGetConcurrentGoroutines(t *testing.T) {
	a := archive61(t)
	dir := t.TempDir()
	const n = 6
	kernels := make([]*Kernel, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			// Separate Cache values, one shared directory: like processes.
			kernels[i], errs[i] = a.cache(dir).Get(context.Background(), "6.1")
		})
	}
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		assert.Equal(t, kernels[0], kernels[i])
	}
	assert.Equal(t, 1, a.count(".deb"), "one download")
	assert.Equal(t, 1, a.hits("/debian/dists/bookworm/Release"), "one apt-get update")
}

func TestGetConcurrentProcesses(t *testing.T) {
	a := archive61(t)
	dir := t.TempDir()
	const procs = 2
	type result struct {
		k   Kernel
		err error
	}
	results := make([]result, procs+1)
	var wg sync.WaitGroup
	for i := range procs {
		wg.Go(func() {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), helperEnv+"="+a.srv.URL, "KERNELS_TEST_HELPER_DIR="+dir, "KERNELS_TEST_HELPER_NAME=6.1")
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				results[i].err = fmt.Errorf("helper: %w: %s", err, stderr.String())
				return
			}
			results[i].err = json.Unmarshal(out, &results[i].k)
			t.Logf("helper %d: %s", i, stderr.String())
		})
	}
	wg.Go(func() {
		k, err := a.cache(dir).Get(context.Background(), "6.1")
		if err == nil {
			results[procs].k = *k
		}
		results[procs].err = err
	})
	wg.Wait()
	for i, r := range results {
		require.NoError(t, r.err, "getter %d", i)
		assert.Equal(t, results[0].k, r.k)
	}
	assert.Equal(t, 1, a.count(".deb"), "one download")
	assert.Equal(t, 1, a.hits("/debian/dists/bookworm/Release"), "one apt-get update")
}

func TestGetUnknownAndBadNamesFailFast(t *testing.T) {
	c := &Cache{Dir: t.TempDir()}
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"6.8", []string{"unknown kernel version", "5.10, 6.1, 6.12, 7.2, 7.3", "path", envOCIRepo}},
		{"5.15-generic", []string{"unknown kernel version"}},
		{"foo", []string{"bad kernel name", "MAJOR.MINOR"}},
		{"6.", []string{"bad kernel name"}},
		{"6.1-", []string{"bad kernel name"}},
		{"", []string{"bad kernel name"}},
		{"6.1-weird", []string{"unknown flavour or tag suffix \"weird\"", "cloud, generic, rt", "debug, selftests"}},
		{"./does-not-exist", []string{"no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, err := c.Get(context.Background(), tc.name)
			require.Error(t, err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.Less(t, time.Since(start), 100*time.Millisecond)
		})
	}
	entries, _ := os.ReadDir(c.Dir)
	assert.Empty(t, entries, "nothing written for bad names")
}

func TestGetWithoutApt(t *testing.T) {
	a := archive61(t)
	t.Setenv("PATH", t.TempDir()) // no apt-get, no dpkg-deb
	_, err := a.cache(t.TempDir()).Get(context.Background(), "6.1")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "fetch kernel 6.1")
	assert.Contains(t, err.Error(), "apt-get not found")
	assert.Contains(t, err.Error(), "install the apt package")
}

// TestGetChecksValidUntil: a Release file past its Valid-Until date (an old or
// replayed index) is refused, unless the host's apt configuration turns the
// check off, and then a warning says so.
func TestGetChecksValidUntil(t *testing.T) {
	tests := []struct {
		name       string
		validUntil time.Time
		checkOff   bool
		wantErr    string
		wantWarn   bool
	}{
		{"fresh", time.Now().Add(24 * time.Hour), false, "", false},
		{"fresh, host check off", time.Now().Add(24 * time.Hour), true, "", false},
		{"expired", time.Now().Add(-24 * time.Hour), false, "is expired", false},
		{"expired, host check off", time.Now().Add(-24 * time.Hour), true, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := archive61(t)
			a.validUntil = tt.validUntil
			c := a.cache(t.TempDir())
			c.checkOff = &tt.checkOff
			progress := &syncBuffer{}
			c.Progress = progress
			k, err := c.Get(context.Background(), "6.1")
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Contains(t, err.Error(), "Check-Valid-Until")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "6.1.0-41-cloud-amd64", k.Release)
			if tt.wantWarn {
				assert.Equal(t, 1, strings.Count(progress.String(), "turns the date check off"), "said once:\n%s", progress)
			} else {
				assert.NotContains(t, progress.String(), "date check")
			}
		})
	}
}
