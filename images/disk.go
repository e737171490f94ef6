package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// A disk is how large host trees reach the guest: an ext4 image attached as
// a drive, read by the guest kernel only where a program opens a file. In an
// initramfs every byte is copied at every boot (a 6 MB module cost about
// 0.15 s a boot under emulation); on a disk, GOROOT or all of a kernel's
// modules cost the same few tens of milliseconds as one file (see the README).

// DiskOptions describe an ext4 image made by WriteDisk.
type DiskOptions struct {
	// Label is the volume label the guest finds the drive by (at most 16
	// bytes).
	Label string
	// FreeBytes is room left for the guest to write (the host attaches
	// the image copy-on-write, so the image itself never changes).
	FreeBytes int64
}

// ErrNoMke2fs is returned by WriteDisk when e2fsprogs is not installed.
var ErrNoMke2fs = errors.New("mke2fs not found: install e2fsprogs (Debian/Ubuntu: apt-get install e2fsprogs)")

// WriteDisk writes to dst an ext4 file system holding files, each at its
// Guest path below the file system's root. It uses e2fsprogs' mke2fs -d,
// which reads a directory: the files are staged there as hard links to the
// host files where possible (no copy), else copied.
func WriteDisk(ctx context.Context, dst string, files []File, opts DiskOptions) error {
	if len(opts.Label) > 16 {
		return fmt.Errorf("disk label %q: longer than 16 bytes", opts.Label)
	}
	mke2fs, err := findMke2fs()
	if err != nil {
		return err
	}
	stage, err := os.MkdirTemp(filepath.Dir(dst), ".stage-")
	if err != nil {
		return fmt.Errorf("write disk %s: %w", dst, err)
	}
	defer os.RemoveAll(stage)
	var size, inodes int64
	for _, f := range files {
		n, err := stageFile(stage, f)
		if err != nil {
			return fmt.Errorf("write disk %s: %w", dst, err)
		}
		// Whole blocks, and the directories and metadata around them.
		size += (n+4095)/4096*4096 + 512
		inodes++
	}
	inodes = inodes*2 + 1024
	size += size/8 + opts.FreeBytes + 8<<20
	f, err := os.CreateTemp(filepath.Dir(dst), ".disk-*.tmp")
	if err != nil {
		return fmt.Errorf("write disk %s: %w", dst, err)
	}
	tmp := f.Name()
	err = f.Truncate(size) // sparse: free space costs nothing
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write disk %s: %w", dst, err)
	}
	// No journal: the image is thrown away after one boot, and replaying
	// or creating a journal is time under emulation.
	args := []string{"-q", "-F", "-t", "ext4", "-O", "^has_journal", "-N", fmt.Sprint(inodes),
		"-E", "root_owner=0:0", "-d", stage, tmp}
	if opts.Label != "" {
		args = append(args, "-L", opts.Label)
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, mke2fs, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		os.Remove(tmp)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("write disk %s: mke2fs: %w: %s", dst, err, strings.TrimSpace(out.String()))
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write disk %s: %w", dst, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write disk %s: %w", dst, err)
	}
	return nil
}

// stageFile puts f below dir and returns its size.
func stageFile(dir string, f File) (int64, error) {
	name := strings.TrimPrefix(filepath.Clean(f.Guest), "/")
	if !filepath.IsAbs(f.Guest) || name == "" || name == "." || !filepath.IsLocal(name) {
		return 0, fmt.Errorf("bad guest path %q", f.Guest)
	}
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return 0, err
	}
	if f.Host == "" {
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		return int64(len(f.Data)), os.WriteFile(p, f.Data, mode)
	}
	st, err := os.Stat(f.Host)
	if err != nil {
		return 0, err
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("%s: not a regular file", f.Host)
	}
	// A hard link shares the host file's mode, so only when that is the
	// mode asked for.
	if f.Mode == 0 || f.Mode == st.Mode().Perm() {
		if err := os.Link(f.Host, p); err == nil {
			return st.Size(), nil
		}
	}
	mode := f.Mode
	if mode == 0 {
		mode = st.Mode().Perm()
	}
	return st.Size(), copyFile(p, f.Host, mode)
}

func copyFile(dst, src string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// findMke2fs finds e2fsprogs' mke2fs, also where a non-root PATH lacks sbin.
func findMke2fs() (string, error) {
	if p, err := exec.LookPath("mke2fs"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/mke2fs", "/sbin/mke2fs"} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", ErrNoMke2fs
}
