package kernels

import (
	"context"
	"debug/elf"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// addDebugPackage adds the -dbg package of a kernel, holding vmlinux at the
// path Debian uses, made for release vmRelease.
func (a *fakeArchive) addDebugPackage(suite, release, version string, vmlinux []byte) {
	root := a.t.TempDir()
	p := filepath.Join(root, "usr/lib/debug/boot/vmlinux-"+release)
	require.NoError(a.t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(a.t, os.WriteFile(p, vmlinux, 0o644))
	// Debian's package also holds the modules' debug files, after vmlinux.
	ko := filepath.Join(root, "usr/lib/debug/lib/modules", release, "kernel/drivers/net/veth.ko")
	require.NoError(a.t, os.MkdirAll(filepath.Dir(ko), 0o755))
	require.NoError(a.t, os.WriteFile(ko, fakeELF("name=veth"), 0o644))
	a.add(suite, "linux-image-"+release+"-dbg", version, "", root)
}

func TestSymbols(t *testing.T) {
	a := archive61(t)
	a.addDebugPackage("bookworm-security", "6.1.0-41-cloud-amd64", "6.1.160-1", fakeVmlinux("6.1.0-41-cloud-amd64", true))
	a.addDebugPackage("bookworm", "6.1.0-40-cloud-amd64", "6.1.150-1", fakeVmlinux("6.1.0-40-cloud-amd64", true)) // an older build's
	a.addDebugPackage("bookworm", "6.1.0-41-amd64", "6.1.160-1", fakeVmlinux("6.1.0-40-amd64", true))             // names another build
	a.addKernel("bookworm", "6.1.0-41-rt-amd64", "6.1.160-1", false, testMods, nil)                               // no -dbg at all
	c := a.cache(t.TempDir())
	ctx := context.Background()

	k, err := c.Get(ctx, "6.1")
	require.NoError(t, err)
	assert.Empty(t, k.Vmlinux, "not fetched yet")
	off := a.cache(c.Dir)
	off.Offline = true
	_, err = off.Symbols(ctx, k)
	require.ErrorIs(t, err, ErrNoSymbols)
	assert.Contains(t, err.Error(), "offline")

	before := c.Stats()
	v, err := c.Symbols(ctx, k)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(filepath.Dir(k.Image), "vmlinux"), v)
	got, err := os.ReadFile(v)
	require.NoError(t, err)
	assert.Equal(t, fakeVmlinux("6.1.0-41-cloud-amd64", true), got, "the vmlinux of exactly this build")
	assert.Equal(t, before.Downloads+1, c.Stats().Downloads)
	debs, _ := filepath.Glob(filepath.Join(c.kernelsDir(), "debs", "*.deb"))
	assert.Len(t, debs, 1, "only the image package stays in the store; the -dbg package is dropped once vmlinux is out")

	// Known from then on, without the network.
	k2, err := off.Get(ctx, "6.1")
	require.NoError(t, err)
	assert.Equal(t, v, k2.Vmlinux)
	v2, err := off.Symbols(ctx, k2)
	require.NoError(t, err)
	assert.Equal(t, v, v2)

	for _, tc := range []struct{ name, want string }{
		{"6.1-generic", "is not the build of the kernel image"},
		{"6.1-rt", "the archive lists no linux-image-6.1.0-41-rt-amd64-dbg 6.1.160-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := c.Get(ctx, tc.name)
			require.NoError(t, err)
			_, err = c.Symbols(ctx, k)
			require.ErrorIs(t, err, ErrNoSymbols)
			assert.Contains(t, err.Error(), tc.want)
			_, statErr := os.Stat(filepath.Join(filepath.Dir(k.Image), "vmlinux"))
			assert.True(t, os.IsNotExist(statErr), "nothing half-made is left")
		})
	}
}

func TestCheckVmlinux(t *testing.T) {
	dir := t.TempDir()
	image := filepath.Join(dir, "vmlinuz")
	require.NoError(t, os.WriteFile(image, fakeBzImage("6.1.0-41-cloud-amd64", 4096), 0o644))
	// An arm64 kernel's vmlinux must be an AArch64 ELF of that build.
	armImage := filepath.Join(dir, "Image")
	const armRel = "6.12.1-cloud-arm64"
	require.NoError(t, os.WriteFile(armImage, fakeArm64Image(armRel, 0), 0o644))
	for _, tc := range []struct {
		name string
		data []byte
		want string // "" for accepted
		arm  bool   // checked against the arm64 Image
	}{
		{"arm64 good", fakeVmlinuxFor(elf.EM_AARCH64, armRel, "#1 SMP", true), "", true},
		{"arm64 given x86-64", fakeVmlinuxFor(elf.EM_X86_64, armRel, "#1 SMP", true), "not an arm64 (AArch64) kernel", true},
		{"arm64 other build", fakeVmlinuxFor(elf.EM_AARCH64, armRel, "#2 SMP", true), "is not the build of the kernel image", true},
		{"arm64 other release", fakeVmlinuxFor(elf.EM_AARCH64, "6.12.2-cloud-arm64", "#1 SMP", true), "is not the build of the kernel image", true},
		{"good", fakeVmlinux("6.1.0-41-cloud-amd64", true), "", false},
		{"stripped", fakeVmlinux("6.1.0-41-cloud-amd64", false), "has no .debug_info", false},
		{"other release", fakeVmlinux("6.1.0-40-cloud-amd64", true), "is not the build of the kernel image", false},
		{"same release, other build", fakeVmlinuxBuild("6.1.0-41-cloud-amd64", "#2 SMP", true), "its banner names another release or build", false},
		{"a module", fakeELF("name=veth"), "not an x86-64 kernel", false},
		{"a bzImage", fakeBzImage("6.1.0-41-cloud-amd64", 4096), "bad magic", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			require.NoError(t, os.WriteFile(p, tc.data, 0o644))
			img := image
			if tc.arm {
				img = armImage
			}
			err := checkVmlinux(p, img)
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrNoSymbols)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestLocalSymbols(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bzImage"), fakeBzImage("6.9.0-test", 4096), 0o644))
	c := &Cache{Dir: t.TempDir()}
	k, err := c.Get(context.Background(), dir)
	require.NoError(t, err)
	_, err = c.Symbols(context.Background(), k)
	require.ErrorIs(t, err, ErrNoSymbols)
	assert.Contains(t, err.Error(), "put the vmlinux of this build beside its image")

	require.NoError(t, os.WriteFile(filepath.Join(dir, "vmlinux"), fakeVmlinux("6.9.0-test", true), 0o644))
	k, err = c.Get(context.Background(), dir)
	require.NoError(t, err)
	v, err := c.Symbols(context.Background(), k)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "vmlinux"), v)
}
