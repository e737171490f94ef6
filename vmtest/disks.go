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

	"github.com/skbstore/skbstore/images"
	"github.com/skbstore/skbstore/kernels"
	"github.com/skbstore/skbstore/vmtest/internal/proto"
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

// DiskTree is a host directory made into a read-only disk image once and
// kept in the cache (ModulesDisk, GorootDisk), mounted at Dir in the guest.
// Being read as files are opened, a tree of hundreds of megabytes costs a
// boot about what one file does.
type DiskTree struct {
	Image string
	// Dir is where the guest mounts it.
	Dir string
	// Label is the volume label the guest finds it by.
	Label string
}

// GuestPath is the PATH commands get in the guest unless Options.Env sets
// one: u-root's commands, and modprobe.
const GuestPath = proto.DefaultPath

// Volume labels the guest agent finds its disks by.
const (
	shareLabel   = "vmtshare"
	modulesLabel = "vmtmods"
	gorootLabel  = "vmtgoroot"
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
	for _, t := range opts.Trees {
		drives = append(drives, drive{path: t.Image, readOnly: true})
		mounts = append(mounts, proto.Disk{Label: t.Label, Dir: t.Dir, ReadOnly: true})
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

// ModulesDisk returns the disk of k's modules directory, for the guest's
// /lib/modules/<release>: the guest then answers the kernel's requests for
// modules from it (kernel.modprobe), so that a test creating a geneve link
// or a flower filter gets the module loaded, as on a host. It is made once
// and kept in cacheDir, and needs e2fsprogs (images.ErrNoMke2fs).
func ModulesDisk(ctx context.Context, k *kernels.Kernel, cacheDir string) (*DiskTree, error) {
	if k.ModulesDir == "" || k.Release == "" {
		return nil, fmt.Errorf("kernel %s has no modules directory", k.Name)
	}
	img, err := treeDisk(ctx, k.ModulesDir, "modules.dep", modulesLabel, "modules-"+k.Release, cacheDir)
	if err != nil {
		return nil, fmt.Errorf("modules of kernel %s for the guest: %w", k.Name, err)
	}
	return &DiskTree{Image: img, Dir: "/lib/modules/" + k.Release, Label: modulesLabel}, nil
}

// GorootDisk returns the disk of the Go installation at goroot, for the
// same path in the guest: tests that read GOROOT's sources (go/importer) or
// run the go command find them, as with plain go test. Made once per Go
// version and kept in cacheDir.
func GorootDisk(ctx context.Context, goroot, cacheDir string) (*DiskTree, error) {
	img, err := treeDisk(ctx, goroot, "VERSION", gorootLabel, "goroot", cacheDir)
	if err != nil {
		return nil, fmt.Errorf("GOROOT %s for the guest: %w", goroot, err)
	}
	return &DiskTree{Image: img, Dir: goroot, Label: gorootLabel}, nil
}

// treeDisk makes (once) the disk image of the regular files below dir. A
// marker file in dir that changes with its content (modules.dep, VERSION)
// tells one version from the next.
func treeDisk(ctx context.Context, dir, marker, label, name, cacheDir string) (string, error) {
	st, err := os.Stat(filepath.Join(dir, marker))
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00%d\x00%d", dir, st.Size(), st.ModTime().UnixNano()))
	img := filepath.Join(cacheDir, "disks", name+"-"+hex.EncodeToString(h[:8])+".ext4")
	if _, err := os.Stat(img); err == nil {
		return img, nil
	}
	var files []images.File
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		// Links (a modules directory's build/ and source/) point at
		// host headers, not at what the tree is for.
		if d.Type().IsRegular() {
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			files = append(files, images.File{Guest: "/" + rel, Host: p})
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(img), 0o755); err != nil {
		return "", err
	}
	// WriteDisk renames into place: a concurrent maker of the same image
	// writes the same bytes.
	if err := images.WriteDisk(ctx, img, files, images.DiskOptions{Label: label}); err != nil {
		return "", err
	}
	return img, nil
}
