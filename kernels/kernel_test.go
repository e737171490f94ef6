package kernels

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigValue(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config")
	require.NoError(t, os.WriteFile(cfg, []byte(`#
# Automatically generated file; DO NOT EDIT.
CONFIG_BPF_SYSCALL=y
CONFIG_VETH=m
# CONFIG_NET_ACT_MIRRED is not set
CONFIG_LOCALVERSION="-cloud \"x\""
CONFIG_NR_CPUS=64
CONFIG_BPF=
`), 0o644))
	k := &Kernel{Name: "t", Config: cfg}
	for _, tc := range []struct {
		key, want string
		ok        bool
	}{
		{"CONFIG_BPF_SYSCALL", "y", true},
		{"BPF_SYSCALL", "y", true},
		{"CONFIG_VETH", "m", true},
		{"CONFIG_NET_ACT_MIRRED", "", false},
		{"CONFIG_LOCALVERSION", `-cloud "x"`, true},
		{"CONFIG_NR_CPUS", "64", true},
		{"CONFIG_BPF", "", true},
		{"CONFIG_NOPE", "", false},
		{"CONFIG_BPF_SYS", "", false},
	} {
		t.Run(tc.key, func(t *testing.T) {
			v, ok, err := k.ConfigValue(tc.key)
			require.NoError(t, err)
			assert.Equal(t, tc.ok, ok)
			assert.Equal(t, tc.want, v)
		})
	}
	_, _, err := (&Kernel{Name: "t"}).ConfigValue("CONFIG_X")
	assert.ErrorContains(t, err, "config of CONFIG_X is unknown")
	_, _, err = (&Kernel{Name: "t", Config: filepath.Join(t.TempDir(), "nope")}).ConfigValue("CONFIG_X")
	assert.Error(t, err)
}

func TestBzImage(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "bzImage")
	require.NoError(t, os.WriteFile(img, fakeBzImage("6.6.0-rc1+", 4096), 0o644))
	arch, err := ImageArch(img)
	require.NoError(t, err)
	assert.Equal(t, "amd64", arch)
	rel, err := imageRelease(img)
	require.NoError(t, err)
	assert.Equal(t, "6.6.0-rc1+", rel)

	short := filepath.Join(dir, "short")
	require.NoError(t, os.WriteFile(short, []byte("tiny"), 0o644))
	_, err = ImageArch(short)
	assert.Error(t, err, "too short for a bzImage header")
	_, err = bzImageVersion(short)
	assert.ErrorContains(t, err, "not a bzImage")

	elf := filepath.Join(dir, "vmlinux")
	require.NoError(t, os.WriteFile(elf, fakeELF(), 0o644))
	_, err = bzImageVersion(elf)
	assert.ErrorContains(t, err, "not a bzImage")
}

func TestCheckBzImage(t *testing.T) {
	dir := t.TempDir()
	whole := fakeBzImage("6.1.0-1-cloud-amd64", 0)
	whole[bzSetupSectsOff] = 1                                     // 2 × 512 bytes of setup
	binary.LittleEndian.PutUint32(whole[bzSysSizeOff:], 0x1000/16) // then 4 KiB of kernel
	whole = append(whole, make([]byte, 0x400+0x1000-len(whole))...)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o644))
		return p
	}
	tests := []struct {
		path, want string
	}{
		{write("whole", whole), ""},
		{write("signed", append(append([]byte(nil), whole...), make([]byte, 1472)...)), ""},
		{write("truncated", whole[:len(whole)-1]), "is truncated"},
		{write("small", whole[:0x100]), "too small"},
		{write("vmlinux", append([]byte("\x7fELF"), make([]byte, 0x1000)...)), "not an x86 bzImage"},
		{dir, "is a directory"},
		{filepath.Join(dir, "missing"), "no such file"},
	}
	for _, tt := range tests {
		err := CheckBzImage(tt.path)
		if tt.want == "" {
			assert.NoError(t, err, tt.path)
		} else {
			assert.ErrorContains(t, err, tt.want, tt.path)
		}
	}
}
