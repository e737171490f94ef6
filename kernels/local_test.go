package kernels

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLocalKernel(t *testing.T) {
	const rel = "6.8.0-test"
	mods := []fakeMod{{rel: "kernel/drivers/net/veth.ko"}}

	// A directory the way Debian packages lay it out.
	debLike := t.TempDir()
	fakeKernelFiles(t, debLike, rel, false, mods, nil, 0)
	require.NoError(t, builtinDepmod(context.Background(), filepath.Join(debLike, "lib/modules", rel), filepath.Join(debLike, "lib/modules", rel)))

	// A flat directory: vmlinuz, config, lib/modules/<rel>.
	flat := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(flat, "vmlinuz"), fakeBzImage(rel, 0), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(flat, "config"), []byte("CONFIG_BPF=y\n"), 0o644))

	// A kernel build tree.
	build := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(build, "arch/x86/boot"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(build, "arch/x86/boot/bzImage"), fakeBzImage(rel, 0), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(build, ".config"), []byte("CONFIG_BPF=y\n"), 0o644))

	notImage := filepath.Join(t.TempDir(), "vmlinuz")
	require.NoError(t, os.WriteFile(notImage, []byte("#!/bin/sh\n"), 0o644))

	c := &Cache{Dir: t.TempDir()}
	for _, tc := range []struct {
		name, path, image, config, modules, err string
	}{
		{name: "debian-like dir", path: debLike, image: "boot/vmlinuz-" + rel, config: "boot/config-" + rel, modules: "lib/modules/" + rel},
		{name: "image in boot/", path: filepath.Join(debLike, "boot", "vmlinuz-"+rel), image: "boot/vmlinuz-" + rel,
			config: "boot/config-" + rel, modules: "lib/modules/" + rel},
		{name: "flat dir", path: flat, image: "vmlinuz", config: "config"},
		{name: "bare image", path: filepath.Join(flat, "vmlinuz"), image: "vmlinuz", config: "config"},
		{name: "build tree", path: build, image: "arch/x86/boot/bzImage", config: ".config"},
		{name: "not an image", path: notImage, err: "is not a bootable kernel image (neither an x86 bzImage nor an arm64 Image): it is a script"},
		{name: "empty dir", path: t.TempDir(), err: "no kernel image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := c.Get(context.Background(), tc.path)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			base := tc.path
			if st, _ := os.Stat(tc.path); !st.IsDir() {
				base = filepath.Dir(tc.path)
				if filepath.Base(base) == "boot" {
					base = filepath.Dir(base)
				}
			}
			assert.Equal(t, SourceLocal, k.Source)
			assert.Equal(t, tc.path, k.Name)
			assert.Equal(t, rel, k.Release)
			assert.Equal(t, filepath.Join(base, tc.image), k.Image)
			assert.Equal(t, filepath.Join(base, tc.config), k.Config)
			if tc.modules == "" {
				assert.Empty(t, k.ModulesDir)
				return
			}
			assert.Equal(t, filepath.Join(base, tc.modules), k.ModulesDir)
			got, err := k.ResolveModules("veth")
			require.NoError(t, err)
			assert.Equal(t, []string{"veth"}, moduleNames(got))
		})
	}
	entries, _ := os.ReadDir(c.Dir)
	assert.Empty(t, entries, "local kernels are not copied into the cache")
}
