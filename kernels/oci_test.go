package kernels

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tarEntry is one file of a fake image layer.
type tarEntry struct {
	name, link string
	typ        byte
	data       []byte
}

func tarLayer(t *testing.T, entries []tarEntry) v1.Layer {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.data)), Linkname: e.link}
		if e.typ == tar.TypeDir {
			hdr.Mode = 0o755
		}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		require.NoError(t, tw.WriteHeader(hdr))
		if e.typ == tar.TypeReg {
			_, err := tw.Write(e.data)
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	data := b.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	require.NoError(t, err)
	return l
}

// fakeRegistry is an in-process OCI registry that counts blob downloads.
type fakeRegistry struct {
	srv  *httptest.Server
	repo string
	mu   sync.Mutex
	gets map[string]int
}

func newFakeRegistry(t *testing.T) *fakeRegistry {
	r := &fakeRegistry{gets: map[string]int{}}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.gets[req.Method+" "+req.URL.Path]++
		r.mu.Unlock()
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	r.repo = strings.TrimPrefix(r.srv.URL, "http://") + "/cilium/ci-kernels"
	return r
}

func (r *fakeRegistry) push(t *testing.T, tag string, layers ...v1.Layer) v1.Hash {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	require.NoError(t, err)
	ref, err := name.NewTag(r.repo + ":" + tag)
	require.NoError(t, err)
	require.NoError(t, remote.Write(ref, img))
	d, err := img.Digest()
	require.NoError(t, err)
	return d
}

func (r *fakeRegistry) count(substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for k, v := range r.gets {
		if strings.Contains(k, substr) {
			n += v
		}
	}
	return n
}

func TestOCIKernel(t *testing.T) {
	r := newFakeRegistry(t)
	const rel = "6.8.0-ci"
	modDir := "usr/lib/modules/" + rel + "/"
	withModules := tarLayer(t, []tarEntry{
		{name: "boot/", typ: tar.TypeDir},
		{name: "boot/vmlinuz", typ: tar.TypeReg, data: fakeBzImage(rel, 8192)},
		{name: "usr/", typ: tar.TypeDir},
		{name: modDir + "kernel/lib/test_kmods/bpf_testmod.ko", typ: tar.TypeReg, data: fakeELF("depends=bpf_helper", "name=bpf_testmod")},
		{name: modDir + "kernel/lib/test_kmods/bpf_helper.ko", typ: tar.TypeReg, data: fakeELF("depends=", "name=bpf_helper")},
		{name: modDir + "modules.order", typ: tar.TypeReg, data: []byte("kernel/lib/test_kmods/bpf_helper.ko\n")},
		{name: modDir + "modules.order.copy", typ: tar.TypeLink, link: modDir + "modules.order"},
		{name: modDir + "build", typ: tar.TypeSymlink, link: "/usr/src/linux"},
		{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
		{name: "../../escape", typ: tar.TypeReg, data: []byte("stays inside")},
	})
	digest := r.push(t, "6.8", withModules)
	// An image in two layers, the second deleting a file of the first.
	r.push(t, "5.15",
		tarLayer(t, []tarEntry{{name: "boot/vmlinuz", typ: tar.TypeReg, data: fakeBzImage("5.15.0-ci", 4096)}, {name: "boot/junk", typ: tar.TypeReg, data: []byte("x")}}),
		tarLayer(t, []tarEntry{{name: "boot/.wh.junk", typ: tar.TypeReg}, {name: "boot/config", typ: tar.TypeReg, data: []byte("CONFIG_BPF=y\n")}}))

	dir := t.TempDir()
	newCache := func() *Cache {
		return &Cache{Dir: dir, OCIRepo: r.repo, depmodMode: depmodBuiltin, Progress: &syncBuffer{}}
	}
	ctx := context.Background()
	c := newCache()
	k, err := c.Get(ctx, "6.8")
	require.NoError(t, err)
	assert.Equal(t, SourceOCI, k.Source)
	assert.Equal(t, "6.8", k.Name)
	assert.Equal(t, rel, k.Release)
	require.NotEmpty(t, k.Packages)
	assert.Equal(t, r.repo+":6.8", k.Packages[0].Name)
	assert.Equal(t, digest.String(), k.Packages[0].Version)
	assert.Equal(t, filepath.Join(dir, "kernels", "trees", "oci-"+digest.Hex), filepath.Dir(k.Image))
	arch, err := ImageArch(k.Image)
	require.NoError(t, err)
	assert.Equal(t, "amd64", arch)
	assert.Empty(t, k.Config)
	mods, err := k.ResolveModules("bpf_testmod")
	require.NoError(t, err)
	assert.Equal(t, []string{"bpf_helper", "bpf_testmod"}, moduleNames(mods))
	assert.FileExists(t, filepath.Join(k.ModulesDir, "modules.order.copy"), "hard links are copied")
	assert.NoFileExists(t, filepath.Join(k.ModulesDir, "build"), "symlinks are not unpacked")
	assert.NoFileExists(t, filepath.Join(filepath.Dir(dir), "escape"))
	assert.Equal(t, 1, c.Stats().Downloads)
	assert.Equal(t, 1, r.count("GET /v2/cilium/ci-kernels/blobs/"+withModulesDigest(t, withModules)))

	// Warm: no request to the registry.
	before := r.count("")
	k2, err := newCache().Get(ctx, "6.8")
	require.NoError(t, err)
	assert.Equal(t, k.Image, k2.Image)
	assert.Equal(t, before, r.count(""))

	// Corrupt layer and tree: fetched again, the layer downloaded again.
	require.NoError(t, os.Truncate(c.blobPath(k.Packages[1].SHA256), 3))
	require.NoError(t, os.Remove(filepath.Join(filepath.Dir(k.Image), treeMarker)))
	c = newCache()
	k3, err := c.Get(ctx, "6.8")
	require.NoError(t, err)
	assert.Equal(t, k.Image, k3.Image)
	assert.Equal(t, 1, c.Stats().Downloads)
	assert.Equal(t, 2, r.count("GET /v2/cilium/ci-kernels/blobs/"+withModulesDigest(t, withModules)))

	// No modules; a whiteout removed a file of a lower layer.
	k4, err := newCache().Get(ctx, "5.15")
	require.NoError(t, err)
	assert.Equal(t, "5.15.0-ci", k4.Release)
	assert.Empty(t, k4.ModulesDir)
	v, _, err := k4.ConfigValue("BPF")
	require.NoError(t, err)
	assert.Equal(t, "y", v)
	_, err = k4.ResolveModules("veth")
	assert.ErrorContains(t, err, "has no modules")

	list, err := newCache().List()
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, "5.15", list[0].Name)
	assert.Equal(t, SourceOCI, list[0].Source)

	// Unknown tags and flavours fail clearly.
	_, err = newCache().Get(ctx, "6.6")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "fetch kernel 6.6: Debian offers 5.10, 6.1, 6.12, 7.2, 7.3; OCI "+r.repo)
	assert.Contains(t, err.Error(), "MANIFEST_UNKNOWN")
	_, err = newCache().Get(ctx, "6.8-generic")
	assert.ErrorContains(t, err, "not Debian flavours")

	// Offline with the registry gone: still served from the cache.
	r.srv.Close()
	c = newCache()
	c.Offline = true
	_, err = c.Get(ctx, "6.8")
	require.NoError(t, err)
}

func withModulesDigest(t *testing.T, l v1.Layer) string {
	d, err := l.Digest()
	require.NoError(t, err)
	return d.String()
}

func TestNewCacheEnv(t *testing.T) {
	t.Setenv("VMTEST_CACHE_DIR", "/tmp/x-cache")
	t.Setenv("VMTEST_OCI_REPO", "ghcr.io/cilium/ci-kernels")
	c, err := NewCache()
	require.NoError(t, err)
	assert.Equal(t, "/tmp/x-cache", c.Dir)
	assert.Equal(t, "ghcr.io/cilium/ci-kernels", c.OCIRepo)
	t.Setenv("VMTEST_OCI_REPO", "")
	c, err = NewCache()
	require.NoError(t, err)
	assert.Empty(t, c.OCIRepo, "set but empty: no OCI source")
	os.Unsetenv("VMTEST_OCI_REPO") // t.Setenv restores it
	c, err = NewCache()
	require.NoError(t, err)
	assert.Equal(t, DefaultOCIRepo, c.OCIRepo, "unset: cilium's CI kernels")

	t.Setenv("VMTEST_CACHE_DIR", "")
	t.Setenv("XDG_CACHE_HOME", "/tmp/xdg")
	c, err = NewCache()
	require.NoError(t, err)
	assert.Equal(t, "/tmp/xdg/skbstore-vmtest", c.Dir)

	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/tmp/home")
	c, err = NewCache()
	require.NoError(t, err)
	assert.Equal(t, "/tmp/home/.cache/skbstore-vmtest", c.Dir)
}

// ciKernelLayer is a layer laid out as cilium/ci-kernels' images are:
// /boot/vmlinuz, modules under /usr/lib/modules/<release>, /lib -> usr/lib,
// plus extra entries.
func ciKernelLayer(t *testing.T, release, uts string, extra ...tarEntry) v1.Layer {
	image := fakeBzImage(release, 8192)
	copy(image[0x300:], release+" (test@example) "+uts+"\x00")
	mod := "usr/lib/modules/" + release + "/"
	entries := []tarEntry{
		{name: "boot/", typ: tar.TypeDir},
		{name: "boot/vmlinuz", typ: tar.TypeReg, data: image},
		{name: "usr/lib/modules/", typ: tar.TypeDir},
		{name: mod + "kernel/lib/test_kmods/bpf_testmod.ko", typ: tar.TypeReg, data: fakeELF("depends=", "name=bpf_testmod")},
		{name: mod + "modules.order", typ: tar.TypeReg, data: []byte("kernel/lib/test_kmods/bpf_testmod.ko\n")},
		{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
	}
	return tarLayer(t, append(entries, extra...))
}

// pushIndex pushes a multi-platform index under tag: one image per
// platform ("amd64", "arm64"), each of one layer.
func (r *fakeRegistry) pushIndex(t *testing.T, tag string, layers map[string]v1.Layer) {
	var adds []mutate.IndexAddendum
	for arch, l := range layers {
		img, err := mutate.AppendLayers(empty.Image, l)
		require.NoError(t, err)
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	idx := mutate.AppendManifests(empty.Index, adds...)
	ref, err := name.NewTag(r.repo + ":" + tag)
	require.NoError(t, err)
	require.NoError(t, remote.WriteIndex(ref, idx))
}

// TestOCIRegistryLayouts: images as cilium/ci-kernels publishes them, and
// the ways they can go wrong, each resolved or refused with a clear message.
func TestOCIRegistryLayouts(t *testing.T) {
	r := newFakeRegistry(t)
	ctx := context.Background()
	dir := t.TempDir()
	newCache := func() *Cache {
		return &Cache{Dir: dir, OCIRepo: r.repo, depmodMode: depmodBuiltin, Progress: &syncBuffer{}}
	}

	t.Run("multi-platform index", func(t *testing.T) {
		r.pushIndex(t, "mainline", map[string]v1.Layer{
			"amd64": ciKernelLayer(t, "7.4.0-rc1", "#1 SMP"),
			"arm64": tarLayer(t, []tarEntry{{name: "boot/vmlinuz", typ: tar.TypeReg, data: []byte("an arm64 Image")}}),
		})
		k, err := newCache().Get(ctx, "mainline")
		require.NoError(t, err)
		assert.Equal(t, "7.4.0-rc1", k.Release, "the linux/amd64 image")
		assert.NotEmpty(t, k.ModulesDir, "modules under usr/lib, found whatever /lib links to")
		assert.True(t, strings.HasPrefix(k.Packages[0].Version, "sha256:"))
	})

	t.Run("moving tag", func(t *testing.T) {
		first := r.push(t, "stable", ciKernelLayer(t, "7.3.1", "#1 SMP"))
		c := newCache()
		k, err := c.Get(ctx, "stable")
		require.NoError(t, err)
		assert.Equal(t, "7.3.1", k.Release)
		assert.Equal(t, first.String(), k.Packages[0].Version, "the digest is recorded")

		second := r.push(t, "stable", ciKernelLayer(t, "7.3.2", "#1 SMP"))
		k, err = newCache().Get(ctx, "stable")
		require.NoError(t, err)
		assert.Equal(t, "7.3.1", k.Release, "within MaxAge the resolution holds, without asking")
		c = newCache()
		c.Refresh = true
		k, err = c.Get(ctx, "stable")
		require.NoError(t, err)
		assert.Equal(t, "7.3.2", k.Release, "resolved again: the tag moved")
		assert.Equal(t, second.String(), k.Packages[0].Version)
		assert.Contains(t, c.Progress.(*syncBuffer).String(), "moved: "+first.String()+" -> "+second.String())

		// The first image, by its digest: the same kernel as before.
		pinned, err := newCache().Get(ctx, "stable@"+first.String())
		require.NoError(t, err)
		assert.Equal(t, "7.3.1", pinned.Release)
		assert.Equal(t, first.String(), pinned.Packages[0].Version)
		before := r.count("")
		again, err := newCache().Get(ctx, "stable@"+first.String())
		require.NoError(t, err)
		assert.Equal(t, pinned.Image, again.Image)
		assert.Equal(t, before, r.count(""), "a pinned image is never looked up again")
		_, err = newCache().Get(ctx, "stable@sha256:"+hex64)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "MANIFEST_UNKNOWN")
	})

	t.Run("debug image", func(t *testing.T) {
		r.push(t, "6.6", ciKernelLayer(t, "6.6.134", "#1 SMP"))
		vmlinux := fakeVmlinuxBuild("6.6.134", "#1 SMP", true)
		r.push(t, "6.6-debug", ciKernelLayer(t, "6.6.134", "#1 SMP", tarEntry{name: "boot/vmlinux", typ: tar.TypeReg, data: vmlinux}))
		c := newCache()
		k, err := c.Get(ctx, "6.6")
		require.NoError(t, err)
		assert.Empty(t, k.Vmlinux)
		v, err := c.Symbols(ctx, k)
		require.NoError(t, err)
		assert.Equal(t, filepath.Join(filepath.Dir(k.Image), "vmlinux"), v)
		got, err := os.ReadFile(v)
		require.NoError(t, err)
		assert.Equal(t, vmlinux, got)
		dk, err := newCache().Get(ctx, "6.6-debug")
		require.NoError(t, err)
		assert.NotEmpty(t, dk.Vmlinux, "a -debug image is a kernel with its symbols")

		// A -debug tag of another build (it was rebuilt since): refused.
		r.push(t, "6.1", ciKernelLayer(t, "6.1.150", "#1 SMP"))
		r.push(t, "6.1-debug", ciKernelLayer(t, "6.1.150", "#2 SMP", tarEntry{name: "boot/vmlinux", typ: tar.TypeReg, data: fakeVmlinuxBuild("6.1.150", "#2 SMP", true)}))
		k, err = newCache().Get(ctx, "oci:6.1")
		require.NoError(t, err)
		_, err = c.Symbols(ctx, k)
		require.ErrorIs(t, err, ErrNoSymbols)
		assert.Contains(t, err.Error(), "is not the build of the kernel image")
		assert.Contains(t, err.Error(), "has the tag moved")
	})

	t.Run("selftests image", func(t *testing.T) {
		r.push(t, "6.6-selftests", ciKernelLayer(t, "6.6.134", "#1 SMP",
			tarEntry{name: imageSelftestsDir + "/test_progs.bpf.o", typ: tar.TypeReg, data: []byte("\x7fELF bpf")}))
		k, err := newCache().Get(ctx, "6.6-selftests")
		require.NoError(t, err)
		require.NotEmpty(t, k.Selftests)
		assert.FileExists(t, filepath.Join(k.Selftests, "test_progs.bpf.o"))
	})

	t.Run("not a kernel", func(t *testing.T) {
		r.push(t, "6.9", tarLayer(t, []tarEntry{{name: "boot/vmlinuz", typ: tar.TypeReg, data: []byte("#!/bin/sh\necho not a kernel\n")}}))
		_, err := newCache().Get(ctx, "6.9")
		require.Error(t, err)
		assert.Contains(t, err.Error(), "kernel image is neither an x86 bzImage nor an arm64 Image (a script)")
		r.push(t, "6.10", tarLayer(t, []tarEntry{{name: "README", typ: tar.TypeReg, data: []byte("no kernel here")}}))
		_, err = newCache().Get(ctx, "6.10")
		require.Error(t, err)
		assert.Contains(t, err.Error(), "no kernel image (boot/vmlinuz*) found")
	})

	t.Run("registry unreachable", func(t *testing.T) {
		c := &Cache{Dir: t.TempDir(), OCIRepo: "127.0.0.1:1/cilium/ci-kernels"}
		start := time.Now()
		_, err := c.Get(ctx, "6.8")
		require.Error(t, err)
		assert.Less(t, time.Since(start), ociLookupTimeout, "refused connections fail at once")
		for _, want := range []string{"fetch kernel 6.8: Debian offers 5.10, 6.1", "OCI 127.0.0.1:1/cilium/ci-kernels", "connection refused", "VMTEST_OCI_REPO", "local kernel"} {
			assert.Contains(t, err.Error(), want)
		}
	})
}
