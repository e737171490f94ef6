package kernels

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// x86 boot protocol (Documentation/arch/x86/boot.rst): "HdrS" at 0x202 marks
// a bzImage; the u16 at 0x20e points (minus 0x200) at the NUL-terminated
// kernel version string; the byte at 0x1f1 counts the 512-byte setup sectors
// (0 means 4) and the u32 at 0x1f4 the 16-byte paragraphs of the
// protected-mode kernel after them.
const (
	bzMagicOff      = 0x202
	bzVersionPtrOff = 0x20e
	bzSetupSectsOff = 0x1f1
	bzSysSizeOff    = 0x1f4
	bzHeaderSize    = 0x210
)

var bzMagic = []byte("HdrS")

// bzImageVersion returns the whole version string of a bzImage's setup
// header, e.g. "6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) #1
// SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)": the release, who built
// it where, and the build's UTS_VERSION.
func bzImageVersion(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	hdr := make([]byte, bzHeaderSize)
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
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	if len(s) == 0 || s[0] == ' ' {
		return "", fmt.Errorf("%s: bzImage has an empty version string", path)
	}
	return string(s), nil
}

// CheckBzImage checks that path holds a whole x86 bzImage, so that a
// truncated download or a file that is no kernel fails with a message that
// says so, before QEMU boots it into a triple fault that prints nothing: the
// boot header must be there, and the file as long as the setup code and
// the protected-mode kernel it announces. An arm64 Image fails it: CheckImage
// checks a kernel image of any architecture.
func CheckBzImage(path string) error {
	hdr, st, err := readImageHeader(path)
	if err != nil {
		if st != nil && st.IsDir() {
			return fmt.Errorf("kernel %s is a directory, not a bzImage", path)
		}
		return err
	}
	return checkBzImage(path, hdr, st.Size())
}

// checkBzImage checks a file of size bytes whose first bytes are hdr.
func checkBzImage(path string, hdr []byte, size int64) error {
	if len(hdr) < bzHeaderSize {
		return fmt.Errorf("kernel %s: %d bytes is too small for a kernel image", path, size)
	}
	if !bytes.Equal(hdr[bzMagicOff:bzMagicOff+4], bzMagic) {
		return fmt.Errorf("kernel %s is not an x86 bzImage (no \"HdrS\" boot header): give a bzImage (arch/x86/boot/bzImage), not vmlinux or a compressed archive", path)
	}
	setup := int64(hdr[bzSetupSectsOff])
	if setup == 0 {
		setup = 4
	}
	want := (setup+1)*512 + int64(binary.LittleEndian.Uint32(hdr[bzSysSizeOff:bzSysSizeOff+4]))*16
	if size < want {
		return fmt.Errorf("kernel %s is truncated: %d bytes, its boot header says at least %d", path, size, want)
	}
	return nil
}
