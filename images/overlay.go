package images

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/mkuimage/cpio"
)

// File is one file of an overlay: Data, or else the content of the host file
// Host, placed at Guest (an absolute path in the guest).
type File struct {
	Guest string
	Host  string
	Data  []byte
	Mode  os.FileMode // 0 means 0644, or 0755 for a host file that is executable
	// StripDWARF drops the DWARF sections of an ELF executable (see
	// StripDWARF); other files are left as they are.
	StripDWARF bool
}

// Contents returns the bytes and permissions f has in the guest: Data, or
// Host's bytes; Mode, or 0755 for an executable host file and 0644 else;
// without DWARF when StripDWARF.
func (f File) Contents() ([]byte, os.FileMode, error) {
	data, mode := f.Data, f.Mode
	if f.Host != "" {
		b, err := os.ReadFile(f.Host)
		if err != nil {
			return nil, 0, err
		}
		data = b
		if mode == 0 {
			if st, err := os.Stat(f.Host); err == nil && st.Mode()&0o111 != 0 {
				mode = 0o755
			}
		}
	}
	if mode == 0 {
		mode = 0o644
	}
	if f.StripDWARF {
		data, _ = StripDWARF(data)
	}
	return data, mode.Perm(), nil
}

// Write writes the image for one run to dst: the base archive followed by an
// archive holding files (with their parent directories).
func Write(dst, base string, files []File) error {
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("write image: %w", err)
	}
	if err := write(out, base, files); err != nil {
		out.Close()
		os.Remove(dst)
		return fmt.Errorf("write image %s: %w", dst, err)
	}
	return out.Close()
}

func write(out *os.File, base string, files []File) error {
	in, err := os.Open(base)
	if err != nil {
		return err
	}
	n, err := io.Copy(out, in)
	in.Close()
	if err != nil {
		return err
	}
	// Each archive must start on a 4-byte boundary for the kernel's unpacker.
	if pad := (4 - n%4) % 4; pad != 0 {
		if _, err := out.Write(make([]byte, pad)); err != nil {
			return err
		}
	}
	recs, err := records(files)
	if err != nil {
		return err
	}
	w := cpio.NewDedupWriter(cpio.Newc.Writer(out))
	if err := cpio.WriteRecordsAndDirs(w, recs); err != nil {
		return err
	}
	return cpio.WriteTrailer(w)
}

func records(files []File) ([]cpio.Record, error) {
	sorted := append([]File(nil), files...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Guest < sorted[j].Guest })
	var recs []cpio.Record
	for _, f := range sorted {
		name := strings.TrimPrefix(filepath.Clean(f.Guest), "/")
		if name == "" || name == "." || strings.HasPrefix(name, "..") {
			return nil, fmt.Errorf("bad guest path %q", f.Guest)
		}
		data, mode, err := f.Contents()
		if err != nil {
			return nil, err
		}
		recs = append(recs, cpio.StaticRecord(data, cpio.Info{
			Name:     name,
			Mode:     cpio.S_IFREG | uint64(mode.Perm()),
			FileSize: uint64(len(data)),
			NLink:    1,
		}))
	}
	return recs, nil
}
