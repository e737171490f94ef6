package images

import (
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/u-root/mkuimage/cpio"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/u-root/pkg/ldd"
)

// SharedLibraries returns what a dynamically linked program (cgo, -race)
// needs in the guest, which has no C library of its own: its ELF
// interpreter and the libraries it loads, from the host, at the paths the
// loader looks for them. A static program needs none.
func SharedLibraries(path string) ([]File, error) {
	ef, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: not an executable for the guest: %w", path, err)
	}
	dynamic := false
	for _, p := range ef.Progs {
		dynamic = dynamic || p.Type == elf.PT_INTERP
	}
	ef.Close()
	if !dynamic {
		return nil, nil
	}
	libs, err := ldd.List(path)
	if err != nil {
		return nil, fmt.Errorf("%s is dynamically linked and its libraries could not be listed (%w); build it with CGO_ENABLED=0", path, err)
	}
	var files []File
	for _, l := range libs {
		// At the name the loader asks for, with the content of what
		// that name links to on the host.
		files = append(files, File{Guest: l, Host: l, Mode: 0o755})
	}
	return files, nil
}

// selfBase builds (or finds in the cache) a base image whose agent is the
// program self, for a vmtest installed with go install: it needs no source
// and no Go build at run time. self must act as the agent when it runs as
// PID 1 (vmtest's main does). The image is larger than a built one (the
// whole vmtest program), which costs some unpacking time at each boot.
func selfBase(opts BaseOptions, progress io.Writer) (string, error) {
	data, err := os.ReadFile(opts.Self)
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	libs, err := SharedLibraries(opts.Self)
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "vmtest-self-v1\n")
	h.Write(data)
	for _, l := range libs {
		if st, err := os.Stat(l.Host); err == nil {
			fmt.Fprintf(h, "%s %d %d\n", l.Host, st.Size(), st.ModTime().UnixNano())
		}
	}
	key := hex.EncodeToString(h.Sum(nil))
	path := filepath.Join(opts.CacheDir, "base-self-"+key[:24]+".cpio")
	if _, err := os.Stat(path); err == nil {
		now := time.Now()
		_ = os.Chtimes(path, now, now) // in use, for pruneImages
		return path, nil
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	fmt.Fprintf(progress, "building guest image from %s (no source checkout: the vmtest program is the agent)...\n", opts.Self)
	stripped, _ := StripDWARF(data)
	recs, err := cpio.ReadAllRecords(uimage.DefaultRamfs().Reader())
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	recs = append(recs,
		cpio.StaticRecord(stripped, cpio.Info{Name: "bin/vmtest-guest", Mode: cpio.S_IFREG | 0o755, FileSize: uint64(len(stripped)), NLink: 1}),
		cpio.Symlink("init", "bin/vmtest-guest"))
	lrecs, err := records(libs)
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	recs = append(recs, lrecs...)
	tmp, err := os.CreateTemp(opts.CacheDir, "build-*.cpio")
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	defer os.Remove(tmp.Name())
	w := cpio.NewDedupWriter(cpio.Newc.Writer(tmp))
	if err := cpio.WriteRecordsAndDirs(w, recs); err == nil {
		err = cpio.WriteTrailer(w)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	pruneImages(opts.CacheDir, time.Now().Add(-imageMaxAge))
	return path, nil
}
