package kernels

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testImages writes kernel images and look-alikes of both architectures
// into dir, by name.
func testImages(t *testing.T, dir string) map[string]string {
	bz := fakeBzImage("6.1.0-1-cloud-amd64", 0)
	bz[bzSetupSectsOff] = 1
	binary.LittleEndian.PutUint32(bz[bzSysSizeOff:], 0x1000/16)
	bz = append(bz, make([]byte, 0x400+0x1000-len(bz))...)
	arm := fakeArm64Image("6.12.1-cloud-arm64", 64*1024)
	noPE := bytes.Clone(fakeArm64Image("6.12.1-cloud-arm64", minArm64Image))
	copy(noPE, "\x00\x00") // no "MZ": no EFI stub
	mod := func(b []byte, f func([]byte)) []byte {
		b = bytes.Clone(b)
		f(b)
		return b
	}
	files := map[string][]byte{
		"bzImage":            bz,
		"bzImage-truncated":  bz[:len(bz)-1],
		"Image":              arm,
		"Image-truncated":    arm[:len(arm)-1],
		"Image-header-only":  arm[:arm64HeaderSize],
		"Image-nope":         noPE,
		"Image-nope-short":   noPE[:minArm64Image-1],
		"Image-bad-magic":    mod(arm, func(b []byte) { b[arm64MagicOff] = 'X' }),
		"Image-big-endian":   mod(arm, func(b []byte) { b[arm64FlagsOff] |= 1 }),
		"Image-text-offset":  mod(arm, func(b []byte) { binary.LittleEndian.PutUint64(b[arm64TextOffsetOff:], 0x123) }),
		"Image-huge":         mod(arm, func(b []byte) { binary.LittleEndian.PutUint64(b[arm64ImageSizeOff:], 2<<30) }),
		"Image-old-offset":   mod(arm, func(b []byte) { binary.LittleEndian.PutUint64(b[arm64TextOffsetOff:], 0x80000) }),
		"Image.gz":           gzipBytes(t, arm),
		"vmlinux":            fakeVmlinux("6.12.1-cloud-arm64", true),
		"script":             []byte("#!/bin/sh\necho not a kernel\n" + strings.Repeat("#", 1024)),
		"tiny":               []byte("tiny"),
		"zeros":              make([]byte, 4096),
		"Image-PE-truncated": arm[:0x60],
	}
	paths := map[string]string{}
	for name, b := range files {
		paths[name] = filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(paths[name], b, 0o644))
	}
	paths["dir"] = dir
	paths["missing"] = filepath.Join(dir, "missing")
	return paths
}

func TestImageArch(t *testing.T) {
	p := testImages(t, t.TempDir())
	for _, tc := range []struct{ file, arch, err string }{
		{"bzImage", "amd64", ""},
		{"bzImage-truncated", "amd64", ""}, // the magic is all ImageArch reads
		{"Image", "arm64", ""},
		{"Image-header-only", "arm64", ""},
		{"Image-nope", "arm64", ""},
		{"Image-bad-magic", "", "is not a bootable kernel image (neither an x86 bzImage nor an arm64 Image): give a bzImage"},
		{"Image.gz", "", "it is gzip-compressed (an Image.gz?): decompress it"},
		{"vmlinux", "", "it is an ELF file (vmlinux?)"},
		{"script", "", "it is a script"},
		{"tiny", "", "is not a bootable kernel image"},
		{"zeros", "", "is not a bootable kernel image"},
		{"dir", "", "is a directory"},
		{"missing", "", "no such file"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			arch, err := ImageArch(p[tc.file])
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.arch, arch)
		})
	}
}

func TestCheckImage(t *testing.T) {
	p := testImages(t, t.TempDir())
	for _, tc := range []struct{ file, err, bzErr string }{
		{"bzImage", "", ""},
		{"bzImage-truncated", "is truncated: 5119 bytes, its boot header says at least 5120", "is truncated"},
		{"Image", "", "not an x86 bzImage"},
		{"Image-old-offset", "", "not an x86 bzImage"},
		{"Image-nope", "", "not an x86 bzImage"},
		{"Image-truncated", "is truncated: 65535 bytes, its PE header says at least 65536", "not an x86 bzImage"},
		{"Image-PE-truncated", "its PE section table does not fit", "too small"},
		{"Image-header-only", "is truncated", "too small"},
		{"Image-nope-short", "is truncated: 1048575 bytes, an arm64 Image without an EFI stub is at least 1048576", "not an x86 bzImage"},
		{"Image-bad-magic", "neither an x86 bzImage nor an arm64 Image", "not an x86 bzImage"},
		{"Image-big-endian", "big-endian arm64 Image", "not an x86 bzImage"},
		{"Image-text-offset", "text_offset 0x123", "not an x86 bzImage"},
		{"Image-huge", "image_size 0x80000000 is over 1 GiB", "not an x86 bzImage"},
		{"Image.gz", "gzip-compressed", "too small"},
		{"vmlinux", "ELF file", "too small"},
		{"tiny", "4 bytes is too small for a kernel image", "too small"},
		{"zeros", "neither an x86 bzImage nor an arm64 Image", "not an x86 bzImage"},
		{"dir", "is a directory", "is a directory, not a bzImage"},
		{"missing", "no such file", "no such file"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			err := CheckImage(p[tc.file])
			if tc.err == "" {
				assert.NoError(t, err)
			} else {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				assert.Contains(t, err.Error(), p[tc.file], "names the file")
			}
			// CheckBzImage takes x86 kernels only.
			err = CheckBzImage(p[tc.file])
			if tc.bzErr == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tc.bzErr)
			}
		})
	}
}

func TestImageVersion(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o644))
		return p
	}
	const rel = "6.12.118+deb13-cloud-arm64"
	// The banner where the scan's window moves: wholly inside a chunk,
	// across its end, at the last place a window holds it whole, at the
	// file's very end.
	for _, at := range []int{0x1000, bannerChunk - 20, bannerChunk - bannerMax, bannerChunk - bannerMax + 1, bannerChunk, 2*bannerChunk + 7, -1} {
		img := fakeArm64ImageBuild("0.0.0-decoy", "#0", 3*bannerChunk)
		copy(img[0x1000:], make([]byte, 0x200)) // remove the usual banner
		banner := "Linux version " + rel + " (debian-kernel@lists.debian.org) (aarch64-linux-gnu-gcc-14 (Debian 14.2.0-19) 14.2.0, GNU ld (GNU Binutils for Debian) 2.44) #1 SMP Debian 6.12.118-1 (2026-11-20)\n"
		if at < 0 {
			img = append(img[:len(img)-len(banner)], banner...)
		} else {
			copy(img[at:], banner)
		}
		p := write("Image", img)
		v, err := imageVersion(p)
		require.NoError(t, err, "banner at %#x", at)
		assert.Equal(t, rel+" (debian-kernel@lists.debian.org) #1 SMP Debian 6.12.118-1 (2026-11-20)", v, "banner at %#x", at)
		r, err := imageRelease(p)
		require.NoError(t, err)
		assert.Equal(t, rel, r)
	}

	// The release of a bzImage comes from its header.
	r, err := imageRelease(write("bzImage", fakeBzImage("6.1.0-1-cloud-amd64", 0)))
	require.NoError(t, err)
	assert.Equal(t, "6.1.0-1-cloud-amd64", r)

	// No banner (a compressed payload): a clear error.
	img := fakeArm64Image("6.12.1", 0)
	copy(img[0x1000:], make([]byte, 0x200))
	_, err = imageRelease(write("nobanner", img))
	assert.ErrorContains(t, err, `arm64 Image has no "Linux version <release> (..." banner`)
	_, err = imageRelease(write("script", []byte("#!/bin/sh\n")))
	assert.ErrorContains(t, err, "not a bootable kernel image")
}

func TestParseBanner(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Linux version 6.1.0-57-cloud-arm64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) # SMP Debian 6.1.192-3 (2026-11-26)\n",
			"6.1.0-57-cloud-arm64 (debian-kernel@lists.debian.org) # SMP Debian 6.1.192-3 (2026-11-26)"},
		{"Linux version 6.6.0 (me@host) (clang version 17.0.6) #3 SMP PREEMPT\x00", "6.6.0 (me@host) #3 SMP PREEMPT"},
		{"Linux version 6.6.0 (me@host) #3 SMP\n", "6.6.0 (me@host) #3 SMP"},                           // no compiler: kept whole
		{"Linux version 6.6.0 (me@host) (gcc (unbalanced #1\n", "6.6.0 (me@host) (gcc (unbalanced #1"}, // kept whole
		{"Linux version %s (%s)\x00", ""},
		{"Linux version 6.6.0\n", ""},
		{"Linux version 6.6.0 (me@host) no end", ""},
		{"Linux version " + strings.Repeat("6", bannerMax) + " (x)\n", ""},
	} {
		got, ok := parseBanner([]byte(tc.in))
		assert.Equal(t, tc.want != "", ok, "%q", tc.in)
		assert.Equal(t, tc.want, got, "%q", tc.in)
	}
}

func TestDecompressImage(t *testing.T) {
	dir := t.TempDir()
	arm := fakeArm64Image("6.12.1-cloud-arm64", 64*1024)
	p := filepath.Join(dir, "vmlinuz")
	require.NoError(t, os.WriteFile(p, gzipBytes(t, arm), 0o644))
	require.NoError(t, decompressImage(p))
	got, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, arm, got)

	require.NoError(t, decompressImage(p), "a plain image is left alone")
	got, err = os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, arm, got)

	// A gzip bomb: refused, the file left as it was, no temporary left.
	defer func(old int64) { maxImageSize = old }(maxImageSize)
	maxImageSize = 1 << 20
	bomb := gzipBytes(t, make([]byte, maxImageSize+1))
	require.NoError(t, os.WriteFile(p, bomb, 0o644))
	assert.ErrorContains(t, decompressImage(p), "inflates to over 1.0 MiB")
	got, err = os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, bomb, got)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, ents, 1)

	require.NoError(t, os.WriteFile(p, []byte{0x1f, 0x8b, 8, 0, 0, 0}, 0o644))
	assert.ErrorContains(t, decompressImage(p), "decompress kernel image")
}
