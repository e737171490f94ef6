package vmtest

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestChooseAccelForced(t *testing.T) {
	t.Setenv("VMTEST_QEMU", "/bin/true") // the forced paths never start it
	tests := []struct {
		want, env, got string
		err            bool
	}{
		{want: "kvm", got: AccelKVM},
		{want: "tcg", got: AccelTCG},
		{want: "", env: "tcg", got: AccelTCG},
		{want: "auto", env: "kvm", got: AccelKVM},
		{want: "tcg", env: "kvm", got: AccelTCG}, // an explicit choice beats the environment
		{want: "hvf", err: true},
		{want: "", env: "bogus", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.want+"/"+tt.env, func(t *testing.T) {
			t.Setenv("VMTEST_ACCEL", tt.env)
			c, err := ChooseAccel(context.Background(), "", fakeKernel(t, runtime.GOARCH), tt.want, "")
			if tt.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.got, c.Name)
			assert.Equal(t, "forced", c.Reason)
		})
	}
}

func TestChooseAccelMissingQEMU(t *testing.T) {
	_, err := ChooseAccel(context.Background(), "/nonexistent/qemu-system-x86_64", fakeKernel(t, "amd64"), "tcg", "")
	assert.ErrorContains(t, err, "apt-get install qemu-system-x86")
	t.Setenv("VMTEST_QEMU_ARM64", "/nonexistent/qemu-system-aarch64")
	_, err = ChooseAccel(context.Background(), "", fakeKernel(t, "arm64"), "tcg", "")
	assert.ErrorContains(t, err, "needed for arm64 guests: install it (Debian/Ubuntu: apt-get install qemu-system-arm) or set VMTEST_QEMU_ARM64")
	_, err = ChooseAccel(context.Background(), "", filepath.Join(t.TempDir(), "nokernel"), "tcg", "")
	assert.ErrorContains(t, err, "nokernel")
}

// TestChooseAccelForeignArch: a kernel of another architecture than the
// host's runs under emulation, says so, and refuses a forced KVM.
func TestChooseAccelForeignArch(t *testing.T) {
	foreign := "arm64"
	if runtime.GOARCH == "arm64" {
		foreign = "amd64"
	}
	t.Setenv("VMTEST_QEMU", "/bin/true")
	t.Setenv("VMTEST_QEMU_ARM64", "/bin/true")
	t.Setenv("VMTEST_ACCEL", "")
	k := fakeKernel(t, foreign)
	c, err := ChooseAccel(context.Background(), "", k, "auto", "")
	require.NoError(t, err)
	assert.Equal(t, AccelTCG, c.Name)
	assert.Contains(t, c.Reason, foreign+" guest on this "+runtime.GOARCH+" host")
	_, err = ChooseAccel(context.Background(), "", k, "kvm", "")
	assert.ErrorContains(t, err, "KVM runs guests of the host's architecture only")
}

// fakeKernel writes a file that passes kernels.CheckImage as a kernel of
// arch without being one: ChooseAccel reads only its header.
func fakeKernel(t *testing.T, arch string) string {
	t.Helper()
	var b []byte
	switch arch {
	case "amd64":
		b = make([]byte, 8192)
		copy(b[0x202:], "HdrS")
	case "arm64":
		b = make([]byte, 1<<20)
		binary.LittleEndian.PutUint64(b[0x10:], 1<<21) // image_size
		binary.LittleEndian.PutUint32(b[0x38:], 0x644d5241)
	default:
		t.Fatalf("no fake kernel for %s", arch)
	}
	p := filepath.Join(t.TempDir(), arch+"-kernel")
	require.NoError(t, os.WriteFile(p, b, 0o644))
	return p
}
