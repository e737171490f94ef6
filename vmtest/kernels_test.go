package vmtest_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/skbstore/skbstore/kernels"
	"github.com/skbstore/skbstore/vmtest"
)

// TestBootEveryKernel boots each kernel of the matrix, loads veth (and its
// dependencies) from the image in the guest and checks the release the guest
// reports against the package the kernel came from.
func TestBootEveryKernel(t *testing.T) {
	e := setup(t)
	cache, err := kernels.NewCache()
	require.NoError(t, err)
	for _, name := range kernels.Available() {
		t.Run(name, func(t *testing.T) {
			k, err := cache.Get(context.Background(), name)
			require.NoError(t, err)
			vm, err := vmtest.KernelModules(k, "veth")
			require.NoError(t, err)
			require.NotEmpty(t, vm)
			out := t.TempDir()
			res, err := vmtest.Run(context.Background(), vmtest.Options{
				Kernel: k.Image, BaseImage: e.base, Modules: vm, OutDir: out, Timeout: 3 * time.Minute,
				Commands: []vmtest.Command{{ID: "sample", Binary: e.sample, Args: []string{"-test.v", "-test.run", "^TestModuleLoaded$"}}},
			})
			require.NoError(t, err)
			t.Logf("%s: %s (%s) boot %v, total %v, modules %d, compressed %v", name, res.Release, packageNames(k), res.Boot, res.Duration, len(vm), strings.HasSuffix(vm[len(vm)-1].Host, ".xz"))
			require.NoError(t, res.Err(), "output:\n%s\nagent log: %v", output(t, res, 0), res.Log)
			assert.Equal(t, k.Release, res.Release)
			// The release names the package it came from.
			require.NotEmpty(t, k.Packages)
			assert.Contains(t, packageNames(k), k.Release)
			b, err := os.ReadFile(filepath.Join(out, "artifacts", "sample", "uname.txt"))
			require.NoError(t, err)
			assert.Equal(t, k.Release, string(b))
		})
	}
}

func packageNames(k *kernels.Kernel) string {
	var s []string
	for _, p := range k.Packages {
		s = append(s, p.Name+"="+p.Version)
	}
	return strings.Join(s, " ")
}
