package images

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWriteDisk makes an ext4 image and reads it back with e2fsprogs'
// debugfs: every file at its guest path with its bytes and mode, the label
// where the guest looks for it.
func TestWriteDisk(t *testing.T) {
	debugfs, err := exec.LookPath("debugfs")
	if err != nil {
		for _, p := range []string{"/usr/sbin/debugfs", "/sbin/debugfs"} {
			if _, serr := os.Stat(p); serr == nil {
				debugfs, err = p, nil
			}
		}
	}
	if _, merr := findMke2fs(); merr != nil || err != nil {
		t.Skip("needs e2fsprogs (mke2fs, debugfs)")
	}
	host := t.TempDir()
	exe := filepath.Join(host, "prog")
	require.NoError(t, os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755))
	data := filepath.Join(host, "data.bin")
	require.NoError(t, os.WriteFile(data, bytes.Repeat([]byte("x"), 10000), 0o644))
	files := []File{
		{Guest: "/tmp/mod/pkg/prog", Host: exe, Mode: 0o755},
		{Guest: "/tmp/mod/testdata/data.bin", Host: data},
		{Guest: "/tmp/mod/testdata/link.bin", Host: data},     // a link followed by Tree
		{Guest: "/tmp/mod/copy.bin", Host: data, Mode: 0o600}, // another mode: copied, not linked
		{Guest: "/tmp/mod/gen.txt", Data: []byte("generated\n")},
	}
	img := filepath.Join(t.TempDir(), "share.ext4")
	require.NoError(t, WriteDisk(context.Background(), img, files, DiskOptions{Label: "vmtshare", FreeBytes: 1 << 20}))

	cat := func(p string) string {
		out, err := exec.Command(debugfs, "-R", "cat "+p, img).Output()
		require.NoError(t, err)
		return string(out)
	}
	assert.Equal(t, "#!/bin/sh\n", cat("/tmp/mod/pkg/prog"))
	assert.Len(t, cat("/tmp/mod/testdata/data.bin"), 10000)
	assert.Len(t, cat("/tmp/mod/testdata/link.bin"), 10000)
	assert.Equal(t, "generated\n", cat("/tmp/mod/gen.txt"))
	stat, err := exec.Command(debugfs, "-R", "stat /tmp/mod/copy.bin", img).Output()
	require.NoError(t, err)
	assert.Contains(t, string(stat), "Mode:  0600")
	stat, err = exec.Command(debugfs, "-R", "stat /tmp/mod/pkg/prog", img).Output()
	require.NoError(t, err)
	assert.Contains(t, string(stat), "Mode:  0755")
	st, err := os.Stat(data)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), st.Mode().Perm(), "the host file's mode is untouched")

	// The label, read where the guest agent reads it.
	f, err := os.Open(img)
	require.NoError(t, err)
	defer f.Close()
	sb := make([]byte, 0x88)
	_, err = f.ReadAt(sb, 1024)
	require.NoError(t, err)
	assert.Equal(t, uint16(0xef53), binary.LittleEndian.Uint16(sb[0x38:]))
	assert.Equal(t, "vmtshare", string(bytes.TrimRight(sb[0x78:0x88], "\x00")))

	// No staging directory or temporary image is left beside it.
	ents, err := os.ReadDir(filepath.Dir(img))
	require.NoError(t, err)
	assert.Len(t, ents, 1)
}

func TestWriteDiskRefusesBadInput(t *testing.T) {
	if _, err := findMke2fs(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	assert.ErrorContains(t, WriteDisk(context.Background(), filepath.Join(dir, "a"), []File{{Guest: "x", Data: []byte("x")}}, DiskOptions{}), "bad guest path")
	assert.ErrorContains(t, WriteDisk(context.Background(), filepath.Join(dir, "b"), nil, DiskOptions{Label: "a label that is too long"}), "longer than 16")
	assert.Error(t, WriteDisk(context.Background(), filepath.Join(dir, "c"), []File{{Guest: "/x", Host: filepath.Join(dir, "missing")}}, DiskOptions{}))
}
