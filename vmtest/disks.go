package vmtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/skbstore/vmtest/images"
	"github.com/skbstore/vmtest/kernels"
	"github.com/skbstore/vmtest/vmtest/internal/proto"
)

// Share is a host file or directory tree the guest sees at the same path,
// read from a disk (images.WriteDisk) as programs open its files, so its
// size costs a boot next to nothing. The guest may write there: writes go
// to a copy that is dropped when the guest powers off.
type Share struct {
	// Path is the absolute path of the tree in the guest (and, usually,
	// on the host).
	Path string
	// Files are its files, each with a Guest path at or below Path.
	Files []images.File
}

// ModuleTree is a kernel's whole modules directory as a disk image
// (ModulesDisk makes it). The guest mounts it at /lib/modules/<Release> and
// answers the kernel's requests for modules with it (kernel.modprobe), so
// that a test creating a geneve link or a flower filter gets the module
// loaded, as on a host.
type ModuleTree struct {
	Image   string
	Release string
}

// Volume labels the guest agent finds its disks by.
const (
	shareLabel   = "vmtshare"
	modulesLabel = "vmtmods"
	shareMount   = "/.vmtest/share"
)

// shareFreeBytes is room for what the guest writes into shared trees
// (test output files, caches); it lives in a copy-on-write overlay on the host.
const shareFreeBytes = 256 << 20

// drive is a disk image attached to one boot.
type drive struct {
	path     string
	readOnly bool // else attached copy-on-write (QEMU's snapshot=on)
}

// qemuArgs attaches d as an NVMe drive: the controller is built into every
// kernel of the matrix (virtio-blk is a module in most).
func (d drive) qemuArgs(i int) []string {
	mode := "snapshot=on"
	if d.readOnly {
		mode = "readonly=on"
	}
	id := fmt.Sprintf("vmtdisk%d", i)
	// QEMU splits -drive options at commas; a comma in a path is doubled.
	file := strings.ReplaceAll(d.path, ",", ",,")
	return []string{"-drive", fmt.Sprintf("file=%s,if=none,id=%s,format=raw,%s", file, id, mode),
		"-device", fmt.Sprintf("nvme,drive=%s,serial=%s", id, id)}
}

// disks makes the share disk of opts in dir and lists what the guest is to
// mount. The caller removes the files it returns.
func (opts *Options) disks(ctx context.Context, dir string) ([]drive, []proto.Disk, error) {
	var drives []drive
	var mounts []proto.Disk
	if len(opts.Shares) > 0 {
		var files []images.File
		var binds []string
		for _, s := range opts.Shares {
			if !filepath.IsAbs(s.Path) || filepath.Clean(s.Path) == "/" {
				return nil, nil, fmt.Errorf("vmtest: share %q: give an absolute path below /", s.Path)
			}
			binds = append(binds, filepath.Clean(s.Path))
			files = append(files, s.Files...)
		}
		img := filepath.Join(dir, "share.ext4")
		if err := images.WriteDisk(ctx, img, dedupFiles(files), images.DiskOptions{Label: shareLabel, FreeBytes: shareFreeBytes}); err != nil {
			return nil, nil, fmt.Errorf("vmtest: files for the guest: %w", err)
		}
		drives = append(drives, drive{path: img})
		mounts = append(mounts, proto.Disk{Label: shareLabel, Dir: shareMount, Binds: outermost(binds)})
	}
	if m := opts.ModuleTree; m != nil {
		drives = append(drives, drive{path: m.Image, readOnly: true})
		mounts = append(mounts, proto.Disk{Label: modulesLabel, Dir: "/lib/modules/" + m.Release, ReadOnly: true})
	}
	return drives, mounts, nil
}

// dedupFiles drops later files at a guest path already taken (a -share
// inside the module).
func dedupFiles(files []images.File) []images.File {
	seen := map[string]bool{}
	var out []images.File
	for _, f := range files {
		g := filepath.Clean(f.Guest)
		if !seen[g] {
			seen[g] = true
			out = append(out, f)
		}
	}
	return out
}

// outermost keeps the paths not inside another one: binding a directory
// shows what is below it already.
func outermost(paths []string) []string {
	slices.Sort(paths)
	paths = slices.Compact(paths)
	var out []string
	for _, p := range paths {
		if len(out) > 0 && strings.HasPrefix(p, out[len(out)-1]+"/") {
			continue
		}
		out = append(out, p)
	}
	return out
}

// ModulesDisk returns the disk image of k's modules directory, made once and
// kept in cacheDir. It needs e2fsprogs (images.ErrNoMke2fs).
func ModulesDisk(ctx context.Context, k *kernels.Kernel, cacheDir string) (*ModuleTree, error) {
	if k.ModulesDir == "" || k.Release == "" {
		return nil, fmt.Errorf("kernel %s has no modules directory", k.Name)
	}
	dep, err := os.Stat(filepath.Join(k.ModulesDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("modules of kernel %s: %w", k.Name, err)
	}
	// The kernel cache never changes a tree in place; its path and
	// modules.dep tell one from another.
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d\x00%d", k.ModulesDir, dep.Size(), dep.ModTime().UnixNano()))
	img := filepath.Join(cacheDir, "disks", "modules-"+k.Release+"-"+hex.EncodeToString(h[:8])+".ext4")
	if _, err := os.Stat(img); err == nil {
		return &ModuleTree{Image: img, Release: k.Release}, nil
	}
	var files []images.File
	err = filepath.WalkDir(k.ModulesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		// Links (build/, source/) point at host headers, not modules.
		if d.Type().IsRegular() {
			rel, err := filepath.Rel(k.ModulesDir, p)
			if err != nil {
				return err
			}
			files = append(files, images.File{Guest: "/" + rel, Host: p})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("modules of kernel %s: %w", k.Name, err)
	}
	if err := os.MkdirAll(filepath.Dir(img), 0o755); err != nil {
		return nil, err
	}
	// WriteDisk renames into place: a concurrent maker of the same image
	// writes the same bytes.
	if err := images.WriteDisk(ctx, img, files, images.DiskOptions{Label: modulesLabel}); err != nil {
		return nil, fmt.Errorf("modules of kernel %s for the guest: %w", k.Name, err)
	}
	return &ModuleTree{Image: img, Release: k.Release}, nil
}
