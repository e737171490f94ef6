package vmtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMachineArgs checks the parts of the QEMU command line that differ by
// architecture: a board the kernel has drivers for, the console the kernel
// writes to, and the result port where the agent looks for it.
func TestMachineArgs(t *testing.T) {
	for _, tc := range []struct {
		arch    string
		want    []string // consecutive argument pairs
		console string
		port    string
	}{
		{"amd64", []string{"-M q35", "-cpu max,-erms,-fsrm", "-serial chardev:res", "-device isa-debug-exit,iobase=0xf4,iosize=0x01"}, "console=ttyS0,115200", "/dev/ttyS1"},
		{"arm64", []string{"-M virt", "-cpu neoverse-n1", "-device pci-serial,chardev=res"}, "console=ttyAMA0,115200", "/dev/ttyS0"},
	} {
		t.Run(tc.arch, func(t *testing.T) {
			m, err := machineFor(tc.arch)
			require.NoError(t, err)
			opts := Options{Kernel: "k", mach: m}
			args := qemuArgs(opts, AccelChoice{Name: AccelTCG}, "initrd", nil, 3)
			line := strings.Join(args, " ")
			for _, w := range tc.want {
				assert.Contains(t, line, w)
			}
			assert.Contains(t, line, tc.console)
			assert.Contains(t, line, "socket,id=res,fd=3")
			assert.Equal(t, tc.port, m.resultPort)
			// The floor has no port but the same machine.
			floor := strings.Join(qemuArgs(opts, AccelChoice{Name: AccelTCG}, "initrd", nil, -1), " ")
			assert.Contains(t, floor, "null,id=res")
			assert.Equal(t, strings.Replace(line, "socket,id=res,fd=3", "null,id=res", 1), floor)
		})
	}
	arm, err := machineFor("arm64")
	require.NoError(t, err)
	assert.Zero(t, arm.exitPort, "arm64 has no I/O ports: it powers off")
	kvm := strings.Join(qemuArgs(Options{Kernel: "k", mach: arm}, AccelChoice{Name: AccelKVM}, "initrd", nil, 3), " ")
	assert.Contains(t, kvm, "-M virt,gic-version=host", "under KVM the host's interrupt controller")
	assert.Contains(t, kvm, "-accel kvm -cpu host")
	_, err = machineFor("riscv64")
	assert.ErrorContains(t, err, `no guests of architecture "riscv64" (have amd64, arm64)`)
}

// TestFirmwarePath checks how -firmware resolves: qboot from QEMU's data
// directory next to the binary (through a symbolic link, as Debian's
// alternatives have it), QEMU's own when absent or asked for, a file given
// by path, and errors that say what to give.
func TestFirmwarePath(t *testing.T) {
	prefix := t.TempDir()
	bin := filepath.Join(prefix, "bin", "qemu-system-x86_64")
	require.NoError(t, os.MkdirAll(filepath.Dir(bin), 0o755))
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755))
	link := filepath.Join(t.TempDir(), "qemu")
	require.NoError(t, os.Symlink(bin, link))
	bare := filepath.Join(t.TempDir(), "qemu-system-x86_64") // no data directory
	require.NoError(t, os.WriteFile(bare, []byte("#!/bin/sh\n"), 0o755))
	qboot := filepath.Join(prefix, "share", "qemu", "qboot.rom")
	require.NoError(t, os.MkdirAll(filepath.Dir(qboot), 0o755))
	require.NoError(t, os.WriteFile(qboot, []byte("rom"), 0o644))
	x86, err := machineFor("amd64")
	require.NoError(t, err)
	arm, err := machineFor("arm64")
	require.NoError(t, err)
	for _, tc := range []struct {
		name, choice, qemu string
		m                  machine
		want, err          string
	}{
		{"auto finds qboot", FirmwareAuto, bin, x86, qboot, ""},
		{"default is auto", "", link, x86, qboot, ""},
		{"auto without qboot", FirmwareAuto, bare, x86, "", ""},
		{"qemu's own", FirmwareQEMU, bin, x86, "", ""},
		{"arm64 keeps its own", FirmwareAuto, bin, arm, "", ""},
		{"a file", qboot, bare, x86, qboot, ""},
		{"missing file", filepath.Join(prefix, "nope.rom"), bin, x86, "", "give auto, qemu or a firmware file"},
		{"a directory", prefix, bin, x86, "", "is not a file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.m.firmwarePath(tc.choice, tc.qemu)
			if tc.err != "" {
				assert.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	// The floor boots the same firmware as the runner.
	opts := Options{Kernel: "k", mach: x86, bios: qboot}
	line := strings.Join(qemuArgs(opts, AccelChoice{Name: AccelTCG}, "initrd", nil, 3), " ")
	assert.Contains(t, line, "-bios "+qboot)
	assert.Contains(t, strings.Join(qemuArgs(opts, AccelChoice{Name: AccelTCG}, "initrd", nil, -1), " "), "-bios "+qboot)
}

// TestBinaryArch builds a program for both architectures and checks that a
// command built for the wrong one is refused before boot, with the fix.
func TestBinaryArch(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	require.NoError(t, os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644))
	bins := map[string]string{}
	for _, arch := range []string{"amd64", "arm64"} {
		bins[arch] = filepath.Join(dir, arch)
		cmd := exec.Command("go", "build", "-o", bins[arch], src)
		cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+arch, "CGO_ENABLED=0", "GO111MODULE=off")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		got, err := BinaryArch(bins[arch])
		require.NoError(t, err)
		assert.Equal(t, arch, got)
	}
	script := filepath.Join(dir, "script")
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755))
	got, err := BinaryArch(script)
	require.NoError(t, err)
	assert.Empty(t, got, "a script has no architecture")

	arm, err := machineFor("arm64")
	require.NoError(t, err)
	o := Options{Kernel: "Image", mach: arm, Commands: []Command{{ID: "t", Binary: bins["arm64"]}, {ID: "s", Binary: script}}}
	assert.NoError(t, o.checkBinaries())
	o.Commands = append(o.Commands, Command{ID: "x", Binary: bins["amd64"]})
	assert.ErrorContains(t, o.checkBinaries(), "is built for amd64, the kernel Image is arm64: build it with GOARCH=arm64")
}
