package images

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// TreeOptions say what Tree leaves out and how much it takes.
type TreeOptions struct {
	// SkipDirs are directory names left out wherever they are (".git",
	// a results directory...).
	SkipDirs []string
	// SkipPaths are absolute paths left out.
	SkipPaths []string
	// MaxBytes bounds the total size of the files; 0 means no bound.
	MaxBytes int64
}

// ErrTooBig is returned by Tree when the files are larger than MaxBytes.
var ErrTooBig = errors.New("too large for the guest image")

// Tree returns Files for everything under the host directory root (or the
// file root), each at
// the same absolute path in the guest, as a program running there in root
// would see it: symbolic links are followed (a link to a file becomes that
// file; a link to a directory, that directory's files), so that a test
// reading testdata/x.elf through a link, or ../testdata, finds the same
// bytes. It also returns the total size.
func Tree(root string, opts TreeOptions) ([]File, int64, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return nil, 0, err
	}
	t := &tree{opts: opts, skipDir: map[string]bool{}, skipPath: map[string]bool{}, seen: map[string]bool{}}
	for _, d := range opts.SkipDirs {
		t.skipDir[d] = true
	}
	for _, p := range opts.SkipPaths {
		t.skipPath[filepath.Clean(p)] = true
	}
	info, err := os.Stat(root)
	if err != nil {
		return nil, 0, err
	}
	if !info.IsDir() {
		// A single file (say a program tests read symbols from).
		if err := t.add(root, root, info); err != nil {
			return nil, t.size, err
		}
		return t.files, t.size, nil
	}
	if err := t.walk(root, root, 0); err != nil {
		return nil, t.size, err
	}
	return t.files, t.size, nil
}

func (t *tree) add(host, guest string, info os.FileInfo) error {
	if !info.Mode().IsRegular() {
		return nil
	}
	t.size += info.Size()
	if t.opts.MaxBytes > 0 && t.size > t.opts.MaxBytes {
		return fmt.Errorf("%w: more than %d bytes (at %s)", ErrTooBig, t.opts.MaxBytes, host)
	}
	t.files = append(t.files, File{Guest: guest, Host: host, Mode: info.Mode().Perm()})
	return nil
}

type tree struct {
	opts     TreeOptions
	skipDir  map[string]bool
	skipPath map[string]bool
	seen     map[string]bool // real paths of directories walked, against link loops
	files    []File
	size     int64
}

// maxLinkDepth bounds how many directory links deep Tree follows.
const maxLinkDepth = 8

// walk adds the files under the real directory dir, shown at guest.
func (t *tree) walk(dir, guest string, links int) error {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return err
	}
	if t.seen[real] {
		return nil // a link back into what is already there
	}
	t.seen[real] = true
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		host, g := filepath.Join(dir, e.Name()), filepath.Join(guest, e.Name())
		if t.skipPath[g] || t.skipPath[host] {
			continue
		}
		info, err := os.Stat(host) // follows links
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && e.Type()&fs.ModeSymlink != 0 {
				continue // a dangling link: nothing to read there either
			}
			return err
		}
		switch {
		case info.IsDir():
			if t.skipDir[e.Name()] {
				continue
			}
			depth := links
			if e.Type()&fs.ModeSymlink != 0 {
				if depth++; depth > maxLinkDepth {
					return fmt.Errorf("%s: more than %d directory links deep", host, maxLinkDepth)
				}
			}
			if err := t.walk(host, g, depth); err != nil {
				return err
			}
		default:
			if err := t.add(host, g, info); err != nil {
				return err
			}
		}
	}
	return nil
}
