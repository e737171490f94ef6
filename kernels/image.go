package kernels

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Kernel images of the architectures in Arches: an x86 bzImage (see
// bzimage.go) or an arm64 Image, which is the uncompressed kernel behind a
// 64-byte header (Documentation/arch/arm64/booting.rst):
//
//	0x00 code0, code1  u32 each: executable code ("MZ" first with an EFI stub)
//	0x08 text_offset   u64: load offset (0 since 5.8, 0x80000 before 3.17)
//	0x10 image_size    u64: effective size, with BSS (0 before 3.17)
//	0x18 flags         u64: bit 0 set means big endian
//	0x20 res2-res4     u64 each
//	0x38 magic         u32: 0x644d5241, "ARM\x64"
//	0x3c res5          u32: offset of the PE header with an EFI stub
const (
	arm64HeaderSize    = 64
	arm64TextOffsetOff = 0x08
	arm64ImageSizeOff  = 0x10
	arm64FlagsOff      = 0x18
	arm64MagicOff      = 0x38
	arm64PEOff         = 0x3c
)

var (
	arm64Magic = []byte("ARM\x64")
	gzipMagic  = []byte{0x1f, 0x8b}
	elfMagic   = []byte("\x7fELF")
)

// minArm64Image is the least an arm64 Image without a PE header (which says
// how long the file must be) may weigh: even a tiny configuration's kernel
// is larger, and less is a truncated file.
const minArm64Image = 1 << 20

// maxImageSize bounds a kernel image decompressed at extraction: arm64
// Images are 30 to 60 MiB; a gzip stream inflating beyond is refused.
var maxImageSize int64 = 256 << 20

// readImageHeader reads the first bytes of a kernel image, enough for
// either kind's header (fewer if the file is shorter).
func readImageHeader(path string) ([]byte, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("kernel: %w", err)
	}
	if st.IsDir() {
		return nil, st, fmt.Errorf("kernel %s is a directory, not a kernel image", path)
	}
	hdr := make([]byte, bzHeaderSize)
	n, err := io.ReadFull(f, hdr)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, st, fmt.Errorf("kernel %s: %w", path, err)
	}
	return hdr[:n], st, nil
}

// headerArch is the architecture a kernel image's first bytes say it is
// for, "" if neither kind's.
func headerArch(hdr []byte) string {
	switch {
	case len(hdr) >= bzMagicOff+4 && bytes.Equal(hdr[bzMagicOff:bzMagicOff+4], bzMagic):
		return "amd64"
	case len(hdr) >= arm64HeaderSize && bytes.Equal(hdr[arm64MagicOff:arm64MagicOff+4], arm64Magic):
		return "arm64"
	}
	return ""
}

// notImageError explains why a file whose header is hdr is no kernel image.
func notImageError(path string, hdr []byte) error {
	const what = "is not a bootable kernel image (neither an x86 bzImage nor an arm64 Image)"
	give := "give a bzImage (arch/x86/boot/bzImage) or an arm64 Image (arch/arm64/boot/Image)"
	switch kind := fileKind(hdr); kind {
	case "gzip-compressed":
		return fmt.Errorf("kernel %s %s: it is gzip-compressed (an Image.gz?): decompress it (gunzip -c %s >Image) and give the plain image", path, what, path)
	case "":
		return fmt.Errorf("kernel %s %s: %s, not vmlinux or a compressed archive", path, what, give)
	default:
		return fmt.Errorf("kernel %s %s: it is %s: %s", path, what, kind, give)
	}
}

// fileKind names what a file that is no kernel image seems to be, from its
// first bytes; "" if unknown.
func fileKind(hdr []byte) string {
	switch {
	case bytes.HasPrefix(hdr, gzipMagic):
		return "gzip-compressed"
	case bytes.HasPrefix(hdr, elfMagic):
		return "an ELF file (vmlinux?)"
	case bytes.HasPrefix(hdr, []byte("#!")):
		return "a script"
	}
	return ""
}

// ImageArch returns the architecture (GOARCH's name) of the kernel image at
// path: "amd64" for an x86 bzImage ("HdrS" at 0x202), "arm64" for an arm64
// Image ("ARM\x64" at 0x38). Anything else is an error that says what the
// file seems to be instead.
func ImageArch(path string) (string, error) {
	hdr, _, err := readImageHeader(path)
	if err != nil {
		return "", err
	}
	if arch := headerArch(hdr); arch != "" {
		return arch, nil
	}
	return "", notImageError(path, hdr)
}

// CheckImage checks that path holds a whole kernel image QEMU can boot, so
// that a truncated download or a file that is no kernel fails with a message
// that says so, before the guest dies silently. An x86 bzImage is checked
// as CheckBzImage does. An arm64 Image must be little endian with a sane
// header, and as long as its PE header's sections (an EFI stub's) reach, or
// at least 1 MiB without one.
func CheckImage(path string) error {
	hdr, st, err := readImageHeader(path)
	if err != nil {
		return err
	}
	switch headerArch(hdr) {
	case "amd64":
		return checkBzImage(path, hdr, st.Size())
	case "arm64":
		return checkArm64Image(path, hdr, st.Size())
	}
	if len(hdr) < arm64HeaderSize {
		return fmt.Errorf("kernel %s: %d bytes is too small for a kernel image", path, st.Size())
	}
	return notImageError(path, hdr)
}

// checkArm64Image checks an arm64 Image whose first bytes are hdr.
func checkArm64Image(path string, hdr []byte, size int64) error {
	le := binary.LittleEndian
	textOffset := le.Uint64(hdr[arm64TextOffsetOff:])
	imageSize := le.Uint64(hdr[arm64ImageSizeOff:])
	flags := le.Uint64(hdr[arm64FlagsOff:])
	if flags&1 != 0 {
		return fmt.Errorf("kernel %s is a big-endian arm64 Image: only little-endian kernels boot here", path)
	}
	if textOffset%4096 != 0 || textOffset >= 2<<20 {
		return fmt.Errorf("kernel %s is no valid arm64 Image: text_offset %#x is not a multiple of 4 KiB below 2 MiB", path, textOffset)
	}
	if imageSize > 1<<30 {
		return fmt.Errorf("kernel %s is no valid arm64 Image: image_size %#x is over 1 GiB", path, imageSize)
	}
	want, how, err := arm64PEEnd(path, hdr, size)
	if err != nil {
		return err
	}
	if want == 0 {
		want, how = minArm64Image, "an arm64 Image without an EFI stub is at least"
	}
	if size < want {
		return fmt.Errorf("kernel %s is truncated: %d bytes, %s %d", path, size, how, want)
	}
	return nil
}

// arm64PEEnd reads the PE header of an arm64 Image with an EFI stub ("MZ"
// first, the PE header's offset at 0x3c): the file must reach the end of its
// last section's raw data. 0 means there is no PE header.
func arm64PEEnd(path string, hdr []byte, size int64) (int64, string, error) {
	if !bytes.HasPrefix(hdr, []byte("MZ")) {
		return 0, "", nil
	}
	peOff := int64(binary.LittleEndian.Uint32(hdr[arm64PEOff:]))
	if peOff < arm64HeaderSize || peOff+24 > size {
		return 0, "", nil
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, "", fmt.Errorf("kernel: %w", err)
	}
	defer f.Close()
	// PE signature, then the COFF header: NumberOfSections (u16 at +6),
	// SizeOfOptionalHeader (u16 at +20); then the optional header and the
	// section table (40 bytes a section: SizeOfRawData at +16,
	// PointerToRawData at +20).
	var coff [24]byte
	if _, err := f.ReadAt(coff[:], peOff); err != nil {
		return 0, "", fmt.Errorf("kernel %s: read PE header: %w", path, err)
	}
	if !bytes.Equal(coff[:4], []byte("PE\x00\x00")) {
		return 0, "", nil
	}
	le := binary.LittleEndian
	nsec := int64(le.Uint16(coff[4+2:]))
	optSize := int64(le.Uint16(coff[4+16:]))
	secs := make([]byte, nsec*40)
	if _, err := f.ReadAt(secs, peOff+24+optSize); err != nil {
		return 0, "", fmt.Errorf("kernel %s is truncated: %d bytes, its PE section table does not fit", path, size)
	}
	var end int64
	for i := int64(0); i < nsec; i++ {
		s := secs[i*40:]
		if e := int64(le.Uint32(s[20:])) + int64(le.Uint32(s[16:])); e > end {
			end = e
		}
	}
	return end, "its PE header says at least", nil
}

// decompressImage replaces a gzip-compressed kernel image at path by its
// plain content, which is what QEMU and the architecture checks want; other
// files are left alone. At most maxImageSize bytes are written.
func decompressImage(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	if magic, _ := br.Peek(2); !bytes.Equal(magic, gzipMagic) {
		return nil
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return fmt.Errorf("decompress kernel image: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".vmlinuz-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, io.LimitReader(zr, maxImageSize+1))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("decompress kernel image: %w", err)
	}
	if n > maxImageSize {
		return fmt.Errorf("decompress kernel image: it inflates to over %s, no kernel is that large", mib(maxImageSize))
	}
	return os.Rename(tmp.Name(), path)
}

// imageVersion returns the version string of a kernel image in the form a
// bzImage's header holds it: "<release> (<builder>) <UTS_VERSION>".
func imageVersion(path string) (string, error) {
	arch, err := ImageArch(path)
	if err != nil {
		return "", err
	}
	if arch == "arm64" {
		return arm64ImageVersion(path)
	}
	return bzImageVersion(path)
}

// imageRelease reads the kernel release (`uname -r`) from a kernel image
// of either kind.
func imageRelease(path string) (string, error) {
	v, err := imageVersion(path)
	if err != nil {
		return "", err
	}
	release, _, _ := strings.Cut(v, " ")
	return release, nil
}

// An arm64 Image has no version in its header: its release is read from the
// banner in .rodata, "Linux version <release> (<builder>) (<compiler>)
// <UTS_VERSION>\n", found by scanning the file through a bounded window.
const (
	bannerMax   = 512     // longest banner considered
	bannerChunk = 1 << 20 // bytes read at a time
)

var (
	bannerPrefix = []byte("Linux version ")
	releaseRE    = regexp.MustCompile(`^[0-9]+\.[0-9]+[^\s()]*$`)
)

// arm64ImageVersion finds the banner of an uncompressed arm64 Image and
// returns it as a bzImage's version string reads: without "Linux version"
// and without the compiler.
func arm64ImageVersion(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, 0, bannerChunk+bannerMax)
	for {
		n, err := io.ReadFull(f, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		eof := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		if err != nil && !eof {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		// A banner starting before limit lies wholly in buf.
		limit := len(buf) - bannerMax
		if eof {
			limit = len(buf)
		}
		for off := 0; ; {
			i := bytes.Index(buf[off:], bannerPrefix)
			if i < 0 || off+i >= limit {
				break
			}
			if v, ok := parseBanner(buf[off+i:]); ok {
				return v, nil
			}
			off += i + 1
		}
		if eof {
			return "", fmt.Errorf("%s: arm64 Image has no \"Linux version <release> (...\" banner (a compressed kernel?)", path)
		}
		n = copy(buf, buf[max(limit, 0):])
		buf = buf[:n]
	}
}

// parseBanner parses "Linux version <release> (<builder>) (<compiler>)
// <UTS_VERSION>" at the start of b (ending at a newline or NUL) into
// "<release> (<builder>) <UTS_VERSION>"; a banner of another shape gives
// what follows "Linux version ", as long as it starts with a release.
func parseBanner(b []byte) (string, bool) {
	b = b[len(bannerPrefix):min(len(b), bannerMax)]
	end := bytes.IndexAny(b, "\n\x00")
	if end < 0 {
		return "", false
	}
	line := string(b[:end])
	release, rest, ok := strings.Cut(line, " ")
	if !ok || !releaseRE.MatchString(release) || !strings.HasPrefix(rest, "(") {
		return "", false
	}
	builder, rest, ok := strings.Cut(rest, ") ")
	if !ok || !strings.HasPrefix(rest, "(") {
		return line, true
	}
	depth := 0
	for i, c := range rest {
		switch c {
		case '(':
			depth++
		case ')':
			depth--
		}
		if depth == 0 {
			if uts, ok := strings.CutPrefix(rest[i+1:], " "); ok {
				return release + " " + builder + ") " + uts, true
			}
			break
		}
	}
	return line, true
}
