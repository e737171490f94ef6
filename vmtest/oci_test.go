package vmtest_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/skbstore/skbstore/kernels"
	"github.com/skbstore/skbstore/vmtest"
)

// TestBootOCIKernel pushes a real kernel (Debian's 6.1 with its veth
// module) as an image in the layout of cilium/ebpf's CI kernels to a
// registry running in this process, fetches it as version "6.8" through the
// real OCI client and boots it.
func TestBootOCIKernel(t *testing.T) {
	e := setup(t)
	src := e.kernel
	mods, err := src.ResolveModules("veth")
	require.NoError(t, err)

	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	add := func(name, host string) {
		b, err := os.ReadFile(host)
		require.NoError(t, err)
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))}))
		_, err = tw.Write(b)
		require.NoError(t, err)
	}
	add("boot/vmlinuz", src.Image)
	for _, m := range mods {
		add(filepath.Join("lib/modules", src.Release, m.RelPath), m.Path)
	}
	require.NoError(t, tw.Close())
	data := layer.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	require.NoError(t, err)
	img, err := mutate.AppendLayers(empty.Image, l)
	require.NoError(t, err)

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	repo := strings.TrimPrefix(srv.URL, "http://") + "/cilium/ci-kernels"
	ref, err := name.NewTag(repo + ":6.8")
	require.NoError(t, err)
	require.NoError(t, remote.Write(ref, img))

	cache := &kernels.Cache{Dir: t.TempDir(), OCIRepo: repo}
	k, err := cache.Get(context.Background(), "6.8")
	require.NoError(t, err)
	assert.Equal(t, kernels.SourceOCI, k.Source)
	assert.Equal(t, src.Release, k.Release)
	vm, err := vmtest.KernelModules(k, "veth")
	require.NoError(t, err)
	out := t.TempDir()
	res, err := vmtest.Run(context.Background(), vmtest.Options{
		Kernel: k.Image, BaseImage: e.base, Modules: vm, OutDir: out, Timeout: 3 * time.Minute,
		Commands: []vmtest.Command{{ID: "sample", Binary: e.sample, Args: []string{"-test.v", "-test.run", "^TestModuleLoaded$"}}},
	})
	require.NoError(t, err)
	require.NoError(t, res.Err(), "output:\n%s", output(t, res, 0))
	assert.Equal(t, src.Release, res.Release)
}
