package kernels

import (
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
	ok, err := isBzImage(img)
	require.NoError(t, err)
	assert.True(t, ok)
	rel, err := bzImageRelease(img)
	require.NoError(t, err)
	assert.Equal(t, "6.6.0-rc1+", rel)

	short := filepath.Join(dir, "short")
	require.NoError(t, os.WriteFile(short, []byte("tiny"), 0o644))
	ok, err = isBzImage(short)
	require.NoError(t, err)
	assert.False(t, ok)
	_, err = bzImageRelease(short)
	assert.ErrorContains(t, err, "not a bzImage")

	elf := filepath.Join(dir, "vmlinux")
	require.NoError(t, os.WriteFile(elf, fakeELF(), 0o644))
	_, err = bzImageRelease(elf)
	assert.ErrorContains(t, err, "not a bzImage")
}
