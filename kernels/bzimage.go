package kernels

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// x86 boot protocol: "HdrS" at 0x202 marks a bzImage; the u16 at 0x20e
// points (minus 0x200) at the NUL-terminated kernel version string.
const (
	bzMagicOff      = 0x202
	bzVersionPtrOff = 0x20e
)

var bzMagic = []byte("HdrS")

// isBzImage reports whether the file at path carries the bzImage header.
func isBzImage(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	var b [4]byte
	if _, err := f.ReadAt(b[:], bzMagicOff); err != nil {
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		return false, err
	}
	return bytes.Equal(b[:], bzMagic), nil
}

// bzImageRelease reads the kernel release (the first word of the version
// string, as `uname -r` prints it) from a bzImage's setup header.
func bzImageRelease(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return "", fmt.Errorf("%s: not a bzImage: %w", path, err)
	}
	if !bytes.Equal(hdr[bzMagicOff:bzMagicOff+4], bzMagic) {
		return "", fmt.Errorf("%s: not a bzImage (no HdrS magic at 0x202)", path)
	}
	ptr := int64(hdr[bzVersionPtrOff]) | int64(hdr[bzVersionPtrOff+1])<<8
	if ptr == 0 {
		return "", fmt.Errorf("%s: bzImage has no version string", path)
	}
	s := make([]byte, 256)
	n, err := f.ReadAt(s, ptr+0x200)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("%s: read version string: %w", path, err)
	}
	s = s[:n]
	if i := bytes.IndexAny(s, " \x00"); i >= 0 {
		s = s[:i]
	}
	if len(s) == 0 {
		return "", fmt.Errorf("%s: bzImage has an empty version string", path)
	}
	return string(s), nil
}
