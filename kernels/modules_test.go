package kernels

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeModulesDir writes a modules dir with the given modules.dep and
// modules.builtin, and an empty file for every module modules.dep names.
func fakeModulesDir(t *testing.T, dep, builtin string) *Kernel {
	dir := filepath.Join(t.TempDir(), "lib", "modules", "6.1.0-1-test")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644))
	for _, line := range strings.Split(dep, "\n") {
		for _, f := range strings.Fields(strings.Replace(line, ":", " ", 1)) {
			p := filepath.Join(dir, f)
			require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
			require.NoError(t, os.WriteFile(p, nil, 0o644))
		}
	}
	return &Kernel{Name: "test", Release: "6.1.0-1-test", ModulesDir: dir}
}

// A modules.dep in depmod's style: full transitive lists, deepest last.
const testDep = `kernel/drivers/net/veth.ko:
kernel/net/sched/act_mirred.ko:
kernel/net/sched/cls_bpf.ko: kernel/net/sched/cls_core.ko
kernel/fs/nfs/nfs.ko: kernel/fs/lockd/lockd.ko kernel/fs/nfs_common/grace.ko kernel/net/sunrpc/sunrpc.ko kernel/fs/netfs/netfs.ko
kernel/fs/nfs/nfsv4.ko: kernel/fs/nfs/nfs.ko kernel/fs/lockd/lockd.ko kernel/fs/nfs_common/grace.ko kernel/net/sunrpc/sunrpc.ko kernel/fs/netfs/netfs.ko
kernel/fs/lockd/lockd.ko: kernel/fs/nfs_common/grace.ko kernel/net/sunrpc/sunrpc.ko
kernel/fs/nfs_common/grace.ko:
kernel/net/sunrpc/sunrpc.ko:
kernel/fs/netfs/netfs.ko:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/drivers/virtio/virtio_ring.ko.xz: kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio.ko.xz:
kernel/net/cycle/a.ko: kernel/net/cycle/b.ko
kernel/net/cycle/b.ko: kernel/net/cycle/a.ko
kernel/net/gone/parent.ko: kernel/net/gone/child.ko
`

const testBuiltin = "kernel/net/sched/sch_ingress.ko\nkernel/net/sched/cls_core.ko\n"

func TestResolveModules(t *testing.T) {
	k := fakeModulesDir(t, testDep, testBuiltin)
	require.NoError(t, os.Remove(filepath.Join(k.ModulesDir, "kernel/net/gone/child.ko")))
	for _, tc := range []struct {
		name    string
		in      []string
		want    []string // relpaths, in order
		builtin []string
		err     string
	}{
		{name: "no deps", in: []string{"veth"}, want: []string{"kernel/drivers/net/veth.ko"}},
		{name: "none", in: nil, want: nil},
		// modprobe's order: each modules.dep list walked from its end.
		{name: "deps first", in: []string{"nfsv4"}, want: []string{
			"kernel/fs/netfs/netfs.ko", "kernel/net/sunrpc/sunrpc.ko", "kernel/fs/nfs_common/grace.ko",
			"kernel/fs/lockd/lockd.ko", "kernel/fs/nfs/nfs.ko", "kernel/fs/nfs/nfsv4.ko"}},
		{name: "dedup across names", in: []string{"lockd", "nfs", "lockd", "grace"}, want: []string{
			"kernel/net/sunrpc/sunrpc.ko", "kernel/fs/nfs_common/grace.ko", "kernel/fs/lockd/lockd.ko",
			"kernel/fs/netfs/netfs.ko", "kernel/fs/nfs/nfs.ko"}},
		{name: "compressed and dashes", in: []string{"virtio-pci"}, want: []string{
			"kernel/drivers/virtio/virtio.ko.xz", "kernel/drivers/virtio/virtio_ring.ko.xz",
			"kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz", "kernel/drivers/virtio/virtio_pci.ko.xz"}},
		{name: "file names work too", in: []string{"veth.ko", "kernel/net/sched/act_mirred.ko"}, want: []string{
			"kernel/drivers/net/veth.ko", "kernel/net/sched/act_mirred.ko"}},
		{name: "builtin reported, not returned", in: []string{"sch_ingress", "veth", "sch_ingress"},
			want: []string{"kernel/drivers/net/veth.ko"}, builtin: []string{"sch_ingress"}},
		{name: "builtin dependency is skipped", in: []string{"cls_bpf"}, want: []string{"kernel/net/sched/cls_core.ko", "kernel/net/sched/cls_bpf.ko"}},
		{name: "unknown", in: []string{"veth", "nosuch", "alsonot"}, err: `unknown module "nosuch", "alsonot"`},
		{name: "cycle", in: []string{"a"}, err: "dependency cycle: a -> b -> a"},
		{name: "missing file", in: []string{"parent"}, err: "module child is listed in modules.dep but its file is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := k.ResolveModuleSet(tc.in...)
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				assert.Contains(t, err.Error(), "kernel test")
				return
			}
			require.NoError(t, err)
			var rels []string
			for _, m := range set.Load {
				rels = append(rels, m.RelPath)
				assert.Equal(t, filepath.Join(k.ModulesDir, m.RelPath), m.Path)
				assert.Equal(t, moduleName(m.RelPath), m.Name)
			}
			assert.Equal(t, tc.want, rels)
			assertDepsFirst(t, k, set.Load)
			assert.Equal(t, tc.builtin, set.Builtin)
			mods, err := k.ResolveModules(tc.in...)
			require.NoError(t, err)
			assert.Equal(t, set.Load, mods)
		})
	}
}

func TestResolveModulesNoModules(t *testing.T) {
	_, err := (&Kernel{Name: "x"}).ResolveModules("veth")
	assert.ErrorContains(t, err, "has no modules")
	dir := t.TempDir()
	_, err = (&Kernel{Name: "x", ModulesDir: dir}).ResolveModules("veth")
	assert.ErrorContains(t, err, "has no modules.dep")
	assert.ErrorContains(t, err, "depmod")
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"veth": "veth", "veth.ko": "veth", "kernel/net/sched/act-mirred.ko.xz": "act_mirred",
		"x.ko.zst": "x", "x.ko.gz": "x", "virtio-pci": "virtio_pci",
	} {
		assert.Equal(t, want, moduleName(in), in)
	}
}

// The pure-Go generator reads depends= from plain and compressed modules.
func TestBuiltinDepmod(t *testing.T) {
	root := t.TempDir()
	mods := []fakeMod{
		{rel: "kernel/fs/nfs/nfsv4.ko.xz", depends: "nfs,sunrpc"},
		{rel: "kernel/fs/nfs/nfs.ko.zst", depends: "lockd,sunrpc,netfs"},
		{rel: "kernel/fs/lockd/lockd.ko.gz", depends: "grace,sunrpc"},
		{rel: "kernel/fs/nfs_common/grace.ko"},
		{rel: "kernel/net/sunrpc/sunrpc.ko.xz"},
		{rel: "kernel/fs/netfs/netfs.ko"},
		{rel: "kernel/drivers/net/veth.ko"},
		{rel: "updates/dkms/out-of-tree.ko", depends: "veth"},
	}
	fakeKernelFiles(t, root, "6.1.0-1-test", false, mods[:len(mods)-1], nil, 0)
	modDir := filepath.Join(root, "lib/modules/6.1.0-1-test")
	last := mods[len(mods)-1]
	require.NoError(t, os.MkdirAll(filepath.Join(modDir, filepath.Dir(last.rel)), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(modDir, last.rel), fakeELF("depends=veth", "alias=pci:v1234*"), 0o644))

	require.NoError(t, builtinDepmod(context.Background(), modDir, modDir))
	dep, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	require.NoError(t, err)
	// modules.order first, then the rest by path; each line's closure lists
	// direct dependencies first, the deepest last.
	assert.Equal(t, `kernel/fs/nfs/nfsv4.ko.xz: kernel/fs/nfs/nfs.ko.zst kernel/fs/netfs/netfs.ko kernel/fs/lockd/lockd.ko.gz kernel/net/sunrpc/sunrpc.ko.xz kernel/fs/nfs_common/grace.ko
kernel/fs/nfs/nfs.ko.zst: kernel/fs/netfs/netfs.ko kernel/fs/lockd/lockd.ko.gz kernel/net/sunrpc/sunrpc.ko.xz kernel/fs/nfs_common/grace.ko
kernel/fs/lockd/lockd.ko.gz: kernel/net/sunrpc/sunrpc.ko.xz kernel/fs/nfs_common/grace.ko
kernel/fs/nfs_common/grace.ko:
kernel/net/sunrpc/sunrpc.ko.xz:
kernel/fs/netfs/netfs.ko:
kernel/drivers/net/veth.ko:
updates/dkms/out-of-tree.ko: kernel/drivers/net/veth.ko
`, string(dep))
	alias, err := os.ReadFile(filepath.Join(modDir, "modules.alias"))
	require.NoError(t, err)
	assert.Contains(t, string(alias), "alias fake-veth veth\n")
	assert.Contains(t, string(alias), "alias pci:v1234* out_of_tree\n")

	k := &Kernel{Name: "t", ModulesDir: modDir}
	got, err := k.ResolveModules("nfsv4")
	require.NoError(t, err)
	assert.Equal(t, []string{"grace", "sunrpc", "lockd", "netfs", "nfs", "nfsv4"}, moduleNames(got))
	assertDepsFirst(t, k, got)
}

// assertDepsFirst checks that every module comes after all the modules
// modules.dep says it needs, and that nothing comes twice.
func assertDepsFirst(t *testing.T, k *Kernel, mods []Module) {
	t.Helper()
	idx, err := readModuleIndex(k.ModulesDir)
	require.NoError(t, err)
	pos := map[string]int{}
	for i, m := range mods {
		_, dup := pos[m.RelPath]
		assert.False(t, dup, "%s twice", m.RelPath)
		pos[m.RelPath] = i
	}
	for i, m := range mods {
		for _, d := range idx.deps[m.RelPath] {
			j, ok := pos[d]
			if assert.True(t, ok, "%s needs %s, not in the list", m.RelPath, d) {
				assert.Less(t, j, i, "%s must come before %s", d, m.RelPath)
			}
		}
	}
}

func TestBuiltinDepmodErrors(t *testing.T) {
	root := t.TempDir()
	fakeKernelFiles(t, root, "r", false, []fakeMod{{rel: "kernel/a.ko", depends: "missing"}}, nil, 0)
	err := builtinDepmod(context.Background(), filepath.Join(root, "lib/modules/r"), t.TempDir())
	assert.ErrorContains(t, err, "kernel/a.ko depends on missing")

	root = t.TempDir()
	fakeKernelFiles(t, root, "r", false, nil, nil, 0)
	require.NoError(t, os.MkdirAll(filepath.Join(root, "lib/modules/r/kernel"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "lib/modules/r/kernel/bad.ko.xz"), []byte("not xz"), 0o644))
	err = builtinDepmod(context.Background(), filepath.Join(root, "lib/modules/r"), t.TempDir())
	assert.ErrorContains(t, err, "bad.ko.xz")
}

// makeModulesDep prefers kmod's depmod and falls back to the builtin one.
func TestMakeModulesDepModes(t *testing.T) {
	if _, err := findDepmod(); err != nil {
		t.Skip("kmod not installed")
	}
	root := t.TempDir()
	fakeKernelFiles(t, root, "6.1.0-1-test", false, []fakeMod{{rel: "kernel/drivers/net/veth.ko"}}, nil, 0)
	got, err := makeModulesDep(context.Background(), root, "6.1.0-1-test", depmodAuto, nil)
	require.NoError(t, err)
	assert.Equal(t, depmodKmod, got)
	assert.FileExists(t, filepath.Join(root, "lib/modules/6.1.0-1-test/modules.dep"))
	got, err = makeModulesDep(context.Background(), root, "6.1.0-1-test", depmodBuiltin, nil)
	require.NoError(t, err)
	assert.Equal(t, depmodBuiltin, got)
}
