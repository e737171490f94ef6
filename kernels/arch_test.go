package kernels

import (
	"archive/tar"
	"context"
	"debug/elf"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// archive61Arches is archive61 plus arm64 kernels of the same series, whose
// vmlinuz is gzip-compressed, in the same suites.
func archive61Arches(t *testing.T) *fakeArchive {
	a := archive61(t)
	a.gzipArm64 = true
	a.addKernel("bookworm", "6.1.0-40-cloud-arm64", "6.1.150-1", false, testMods, []string{"kernel/net/sched/sch_ingress.ko"})
	a.addKernel("bookworm-security", "6.1.0-41-cloud-arm64", "6.1.160-1", false, testMods, []string{"kernel/net/sched/sch_ingress.ko"})
	a.addKernel("bookworm", "6.1.0-41-arm64", "6.1.160-1", false, testMods, nil)
	a.addKernel("bookworm", "6.1.0-41-arm64-16k", "6.1.160-1", false, testMods, nil) // not the generic flavour
	return a
}

func TestGetArm64(t *testing.T) {
	a := archive61Arches(t)
	c := a.cache(t.TempDir())
	progress := &syncBuffer{}
	c.Progress = progress
	ctx := context.Background()

	k, err := c.Get(ctx, "6.1/arm64")
	require.NoError(t, err)
	assert.Equal(t, "6.1/arm64", k.Name)
	assert.Equal(t, "arm64", k.Arch)
	assert.Equal(t, "6.1.0-41-cloud-arm64", k.Release)
	require.Len(t, k.Packages, 1)
	assert.Equal(t, "linux-image-6.1.0-41-cloud-arm64-unsigned", k.Packages[0].Name)
	assert.NoError(t, CheckImage(k.Image))
	img, err := os.ReadFile(k.Image)
	require.NoError(t, err)
	assert.Equal(t, fakeArm64Image("6.1.0-41-cloud-arm64", 64*1024), img, "the packaged gzip image, decompressed")
	mods, err := k.ResolveModules("act_mirred")
	require.NoError(t, err)
	assert.Equal(t, []string{"nf_base", "act_core", "act_mirred"}, moduleNames(mods))
	assert.Contains(t, progress.String(), "updating Debian package lists for 6.1/arm64")
	assert.Positive(t, a.count("/binary-arm64/Packages"))
	assert.Zero(t, a.count("/binary-amd64/Packages"), "amd64's lists are not fetched for arm64")

	// Its own private apt, for arm64.
	aptDir := filepath.Join(c.kernelsDir(), "apt", "6.1-arm64")
	conf, err := os.ReadFile(filepath.Join(aptDir, "apt.conf"))
	require.NoError(t, err)
	assert.Contains(t, string(conf), "APT::Architecture \"arm64\";\nAPT::Architectures { \"arm64\"; };\n")
	sources, err := os.ReadFile(filepath.Join(aptDir, "sources.list"))
	require.NoError(t, err)
	assert.Contains(t, string(sources), "[arch=arm64 ")
	assert.NotContains(t, string(sources), "amd64")
	assert.FileExists(t, filepath.Join(c.kernelsDir(), "resolved", "6.1_arm64.json"))
	assert.NoDirExists(t, filepath.Join(c.kernelsDir(), "apt", "6.1"), "amd64's apt is untouched")
	assert.NoFileExists(t, filepath.Join(c.kernelsDir(), "resolved", "6.1.json"))

	// amd64 of the same series: another apt state, resolution and tree.
	amd, err := c.Get(ctx, "6.1")
	require.NoError(t, err)
	assert.Equal(t, "amd64", amd.Arch)
	assert.Equal(t, "6.1.0-41-cloud-amd64", amd.Release)
	assert.NotEqual(t, filepath.Dir(k.Image), filepath.Dir(amd.Image))
	assert.Equal(t, 2, c.Stats().Updates, "one update per architecture")
	conf, err = os.ReadFile(filepath.Join(c.kernelsDir(), "apt", "6.1", "apt.conf"))
	require.NoError(t, err)
	assert.Contains(t, string(conf), "APT::Architecture \"amd64\";")
	assert.Positive(t, a.count("/binary-amd64/Packages"))
	arch, err := ImageArch(amd.Image)
	require.NoError(t, err)
	assert.Equal(t, "amd64", arch)

	// "6.1/amd64" is "6.1"; flavours work per architecture.
	amd2, err := a.cache(c.Dir).Get(ctx, "6.1/amd64")
	require.NoError(t, err)
	assert.Equal(t, amd.Image, amd2.Image)
	g, err := c.Get(ctx, "6.1-generic/arm64")
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-41-arm64", g.Release)
	assert.Equal(t, "arm64", g.Arch)

	// Warm, from a new Cache: no request, the same tree.
	reqs := a.count("/")
	c2 := a.cache(c.Dir)
	k2, err := c2.Get(ctx, "6.1-cloud/arm64")
	require.NoError(t, err)
	assert.Equal(t, reqs, a.count("/"), "warm Get made requests")
	assert.Equal(t, k.Image, k2.Image)
	assert.Equal(t, "arm64", k2.Arch)
	res, err := c2.Resolve(ctx, "6.1/arm64")
	require.NoError(t, err)
	assert.Equal(t, k.Packages, res)

	list, err := c2.List()
	require.NoError(t, err)
	var names []string
	for _, ck := range list {
		names = append(names, ck.Name+" "+ck.Arch+" "+ck.Release)
	}
	assert.Equal(t, []string{
		"6.1 amd64 6.1.0-41-cloud-amd64",
		"6.1-generic/arm64 arm64 6.1.0-41-arm64",
		"6.1/arm64 arm64 6.1.0-41-cloud-arm64",
	}, names)

	// A tree whose image is not of the architecture its marker records is
	// unusable, and fetched again.
	require.NoError(t, os.WriteFile(k.Image, fakeBzImage("6.1.0-41-cloud-arm64", len(img)), 0o644))
	k3, err := a.cache(c.Dir).Get(ctx, "6.1/arm64")
	require.NoError(t, err)
	assert.NoError(t, CheckImage(k3.Image))
	arch, err = ImageArch(k3.Image)
	require.NoError(t, err)
	assert.Equal(t, "arm64", arch)
}

// TestGetArm64Split: a 7.x kernel in parts, with its plain arm64 Image
// under usr/lib/modules.
func TestGetArm64Split(t *testing.T) {
	a := newFakeArchive(t)
	a.addKernel("sid", "7.2.13+deb14-cloud-amd64", "7.2.13-1", true, testMods, nil)
	a.addKernel("sid", "7.2.13+deb14-cloud-arm64", "7.2.13-1", true, testMods, nil)
	c := a.cache(t.TempDir())
	k, err := c.Get(context.Background(), "7.2/arm64")
	require.NoError(t, err)
	assert.Equal(t, "7.2.13+deb14-cloud-arm64", k.Release)
	assert.Equal(t, "arm64", k.Arch)
	require.Len(t, k.Packages, 4)
	for _, p := range k.Packages {
		assert.True(t, strings.HasSuffix(p.Name, "-cloud-arm64"), p.Name)
	}
	assert.NoError(t, CheckImage(k.Image))
}

// TestGetArchMismatch: a package whose image is of another architecture
// than its name says is refused.
func TestGetArchMismatch(t *testing.T) {
	a := newFakeArchive(t)
	root := t.TempDir()
	fakeKernelFiles(t, root, "6.1.0-41-cloud-arm64", false, testMods, nil, 0)
	require.NoError(t, os.WriteFile(filepath.Join(root, "boot", "vmlinuz-6.1.0-41-cloud-arm64"), fakeBzImage("6.1.0-41-cloud-arm64", 0), 0o644))
	a.add("bookworm", "linux-image-6.1.0-41-cloud-arm64-unsigned", "6.1.160-1", "", root)
	_, err := a.cache(t.TempDir()).Get(context.Background(), "6.1/arm64")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "linux-image-6.1.0-41-cloud-arm64-unsigned holds an amd64 kernel image, not arm64")
}

func TestSymbolsArm64(t *testing.T) {
	a := archive61Arches(t)
	a.addDebugPackage("bookworm-security", "6.1.0-41-cloud-arm64", "6.1.160-1", fakeVmlinuxFor(elf.EM_AARCH64, "6.1.0-41-cloud-arm64", "#1 SMP", true))
	a.addDebugPackage("bookworm", "6.1.0-41-arm64", "6.1.160-1", fakeVmlinux("6.1.0-41-arm64", true)) // an x86-64 ELF
	c := a.cache(t.TempDir())
	ctx := context.Background()
	k, err := c.Get(ctx, "6.1/arm64")
	require.NoError(t, err)
	v, err := c.Symbols(ctx, k)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(filepath.Dir(k.Image), "vmlinux"), v)
	assert.DirExists(t, filepath.Join(c.kernelsDir(), "apt", "6.1-arm64"))
	assert.NoDirExists(t, filepath.Join(c.kernelsDir(), "apt", "6.1"), "the -dbg package is looked up in arm64's lists")

	g, err := c.Get(ctx, "6.1-generic/arm64")
	require.NoError(t, err)
	_, err = c.Symbols(ctx, g)
	require.ErrorIs(t, err, ErrNoSymbols)
	assert.Contains(t, err.Error(), "is a EM_X86_64 ET_EXEC, not an arm64 (AArch64) kernel (the image is arm64)")
}

func TestLocalKernelArm64(t *testing.T) {
	const rel = "6.12.0-test-arm64"
	build := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(build, "arch/arm64/boot"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(build, "arch/arm64/boot/Image"), fakeArm64Image(rel, 0), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(build, ".config"), []byte("CONFIG_BPF=y\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(build, "vmlinux"), fakeVmlinuxFor(elf.EM_AARCH64, rel, "#1 SMP", true), 0o644))
	flat := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(flat, "Image"), fakeArm64Image(rel, 0), 0o644))
	gz := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(gz, "vmlinuz"), gzipBytes(t, fakeArm64Image(rel, 0)), 0o644))

	c := &Cache{Dir: t.TempDir()}
	ctx := context.Background()
	for _, tc := range []struct{ name, path, image, err string }{
		{"build tree", build, "arch/arm64/boot/Image", ""},
		{"flat dir", flat, "Image", ""},
		{"the image", filepath.Join(flat, "Image"), "Image", ""},
		{"gzip", gz, "", "it is gzip-compressed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := c.Get(ctx, tc.path)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "arm64", k.Arch)
			assert.Equal(t, rel, k.Release)
			assert.Equal(t, SourceLocal, k.Source)
			assert.True(t, strings.HasSuffix(k.Image, string(filepath.Separator)+tc.image), k.Image)
		})
	}

	k, err := c.Get(ctx, build)
	require.NoError(t, err)
	v, err := c.Symbols(ctx, k)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(build, "vmlinux"), v)

	// A name with an architecture whose base is no name: a path, and the
	// error says both.
	_, err = c.Get(ctx, "6.1-nosuch/arm64")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "kernel 6.1-nosuch/arm64: no such file, nor a kernel name for arm64")
	assert.Contains(t, err.Error(), `unknown flavour or tag suffix "nosuch"`)
}

// TestOCIArm64: of a multi-platform index the image for the asked
// architecture is taken; a single-platform image of another one is refused.
func TestOCIArm64(t *testing.T) {
	r := newFakeRegistry(t)
	ctx := context.Background()
	dir := t.TempDir()
	newCache := func() *Cache {
		return &Cache{Dir: dir, OCIRepo: r.repo, depmodMode: depmodBuiltin, Progress: &syncBuffer{}}
	}
	const rel = "7.4.0-rc1"
	armImage := fakeArm64Image(rel, 16*1024)
	r.pushIndex(t, "mainline", map[string]v1.Layer{
		"amd64": ciKernelLayer(t, rel, "#1 SMP"),
		"arm64": tarLayer(t, []tarEntry{
			{name: "boot/", typ: tar.TypeDir},
			{name: "boot/vmlinuz", typ: tar.TypeReg, data: gzipBytes(t, armImage)},
		}),
	})
	amd, err := newCache().Get(ctx, "mainline")
	require.NoError(t, err)
	assert.Equal(t, "amd64", amd.Arch)
	c := newCache()
	arm, err := c.Get(ctx, "mainline/arm64")
	require.NoError(t, err)
	assert.Equal(t, "arm64", arm.Arch)
	assert.Equal(t, "mainline/arm64", arm.Name)
	assert.Equal(t, rel, arm.Release, "from the Image's banner")
	assert.Empty(t, arm.ModulesDir)
	assert.NotEqual(t, amd.Packages[0].Version, arm.Packages[0].Version, "another image of the index")
	got, err := os.ReadFile(arm.Image)
	require.NoError(t, err)
	assert.Equal(t, armImage, got, "stored decompressed")
	assert.FileExists(t, filepath.Join(c.kernelsDir(), "resolved", "oci-mainline_arm64.json"))
	assert.FileExists(t, filepath.Join(c.kernelsDir(), "resolved", "oci-mainline.json"))

	// Warm: no request.
	before := r.count("")
	arm2, err := newCache().Get(ctx, "oci:mainline/arm64")
	require.NoError(t, err)
	assert.Equal(t, arm.Image, arm2.Image)
	assert.Equal(t, before, r.count(""))

	list, err := newCache().List()
	require.NoError(t, err)
	var names []string
	for _, ck := range list {
		names = append(names, ck.Name+" "+ck.Arch)
	}
	assert.Equal(t, []string{"mainline amd64", "mainline/arm64 arm64"}, names)

	// An image of one platform only: for another architecture, refused.
	d := r.push(t, "6.8", ciKernelLayer(t, "6.8.0", "#1 SMP"))
	_, err = newCache().Get(ctx, "6.8/arm64")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "holds an amd64 kernel, not arm64: the repository has no linux/arm64 image of it")
	// The same image by digest: its amd64 tree exists, and is not taken.
	_, err = newCache().Get(ctx, "6.8@"+d.String())
	require.NoError(t, err)
	_, err = newCache().Get(ctx, "6.8@"+d.String()+"/arm64")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "is an amd64 kernel, not arm64")
}
