package vmtest

import (
	"debug/elf"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
)

// machine is what booting a kernel of one architecture takes: the QEMU
// binary and board, the console, and how the result port reaches the guest.
type machine struct {
	arch        string // GOARCH of the guest
	qemu        string // default qemu-system binary
	qemuPackage string // the Debian/Ubuntu package that has it
	board       []string
	kvmBoard    []string // the board under KVM, if it differs
	// tcgCPU is the CPU model under software emulation. On arm64 it was
	// chosen by measurement (README): the suites on 6.12 took 120 s with
	// neoverse-n1, 123 s with cortex-a72, 141 s with max,pauth-impdef=on
	// and 381 s with max (pointer authentication emulated with QARMA).
	// Neoverse N1 is also what arm64 servers run (ARMv8.2, LSE atomics,
	// which the BPF JIT uses when present).
	tcgCPU string
	// console is the kernel's console= device; earlycon makes the first
	// lines appear before the console driver binds.
	console, earlycon string
	// resultPort is the guest's device of the result port and resultArgs
	// the QEMU arguments that attach chardev id "res" there. x86 has a
	// second UART; arm64's virt board has one (the console), so there it
	// is a 16550 on PCI: 8250_pci is built into every arm64 kernel of the
	// matrix, while virtio-pci and virtio-console are modules on 5.10 and
	// 6.1, and the port must work before any module loads.
	resultPort string
	resultArgs []string
	// kernelKind names the image format in error messages.
	kernelKind string
	// exitPort is the I/O port of an isa-debug-exit device (x86 only):
	// the agent ends a boot there instead of powering off (proto.Job.ExitPort).
	exitPort int64
	// firmware is the file name, in QEMU's data directory, of the firmware
	// Options.Firmware "auto" picks when QEMU has it; "" keeps QEMU's.
	firmware string
}

// exitArgs are the QEMU arguments of the machine's exit device.
func (m machine) exitArgs() []string {
	if m.exitPort == 0 {
		return nil
	}
	return []string{"-device", fmt.Sprintf("isa-debug-exit,iobase=%#x,iosize=0x01", m.exitPort)}
}

var machines = map[string]machine{
	"amd64": {
		arch: "amd64", qemu: "qemu-system-x86_64", qemuPackage: "qemu-system-x86",
		board: []string{"-M", "q35"},
		// Without ERMS and FSRM the kernel and Go copy and clear memory
		// with REP MOVSQ/STOSQ instead of byte-wise REP MOVSB/STOSB, which
		// TCG runs one element per step: measured, 5.10 reaches /init
		// 13% sooner (1.47 s -> 1.28 s of its clock, median of 5).
		tcgCPU:  "max,-erms,-fsrm",
		console: "ttyS0", earlycon: "",
		resultPort: "/dev/ttyS1",
		resultArgs: []string{"-serial", "chardev:res"},
		kernelKind: "a bzImage for x86-64",
		exitPort:   0xf4,
		// qboot (QEMU's minimal firmware for direct kernel boot) starts
		// the kernel without probing the NVMe drives as SeaBIOS does:
		// measured under TCG, 0.1 s a boot, 0.2 s with two drives.
		firmware: "qboot.rom",
	},
	"arm64": {
		arch: "arm64", qemu: "qemu-system-aarch64", qemuPackage: "qemu-system-arm",
		board: []string{"-M", "virt"},
		// Under KVM the interrupt controller must be the host's kind (a
		// GICv3 host may have no GICv2 emulation).
		kvmBoard: []string{"-M", "virt,gic-version=host"},
		tcgCPU:   "neoverse-n1",
		console:  "ttyAMA0", earlycon: "earlycon=pl011,0x9000000",
		resultPort: "/dev/ttyS0",
		resultArgs: []string{"-device", "pci-serial,chardev=res"},
		kernelKind: "an arm64 Image",
	},
}

// machineFor returns the machine of a GOARCH.
func machineFor(arch string) (machine, error) {
	m, ok := machines[arch]
	if !ok {
		return machine{}, fmt.Errorf("vmtest: no guests of architecture %q (have %s)", arch, strings.Join(slices.Sorted(maps.Keys(machines)), ", "))
	}
	return m, nil
}

// native reports whether the machine's guests can run under KVM on this host.
func (m machine) native() bool { return m.arch == runtime.GOARCH }

// consoleDevice is the guest's path of the console.
func (m machine) consoleDevice() string { return "/dev/" + m.console }

// elfMachines maps a GOARCH to its ELF machine.
var elfMachines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// BinaryArch returns the GOARCH an ELF executable is built for, "" if it is
// no ELF file (a script).
func BinaryArch(path string) (string, error) {
	r, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer r.Close()
	var magic [4]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil || string(magic[:]) != elf.ELFMAG {
		return "", nil
	}
	f, err := elf.NewFile(r)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	for arch, m := range elfMachines {
		if f.Machine == m {
			return arch, nil
		}
	}
	return f.Machine.String(), nil
}

// checkBinaries refuses command binaries built for another architecture
// than the kernel's, which would otherwise fail in the guest with a bare
// "exec format error".
func (o *Options) checkBinaries() error {
	for _, c := range o.Commands {
		if c.GuestPath != "" || c.Binary == "" {
			continue
		}
		arch, err := BinaryArch(c.Binary)
		if err != nil {
			return fmt.Errorf("vmtest: command %s: %w", c.ID, err)
		}
		if arch != "" && arch != o.mach.arch {
			return fmt.Errorf("vmtest: %s is built for %s, the kernel %s is %s: build it with GOARCH=%s (vmtest run -arch %s does that for go test)",
				c.Binary, arch, o.Kernel, o.mach.arch, o.mach.arch, o.mach.arch)
		}
	}
	return nil
}

// Firmware choices (Options.Firmware).
const (
	FirmwareAuto = "auto" // the machine's fast firmware if QEMU has it, else QEMU's default
	FirmwareQEMU = "qemu" // QEMU's default firmware (SeaBIOS on x86)
)

// firmwarePath resolves choice (Options.Firmware) for the machine and QEMU
// binary: "" means QEMU's default. "auto" looks in QEMU's data directory
// next to the binary (<prefix>/share/qemu), as QEMU itself does.
func (m machine) firmwarePath(choice, qemu string) (string, error) {
	switch choice {
	case "", FirmwareAuto:
		if m.firmware == "" {
			return "", nil
		}
		bin, err := filepath.EvalSymlinks(qemu)
		if err != nil {
			return "", nil
		}
		p := filepath.Join(filepath.Dir(bin), "..", "share", "qemu", m.firmware)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return filepath.Clean(p), nil
		}
		return "", nil
	case FirmwareQEMU:
		return "", nil
	}
	st, err := os.Stat(choice)
	if err != nil {
		return "", fmt.Errorf("vmtest: firmware: %w (give %s, %s or a firmware file)", err, FirmwareAuto, FirmwareQEMU)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("vmtest: firmware %s is not a file", choice)
	}
	return filepath.Abs(choice)
}

// boardArgs is the -M argument under the accelerator.
func (m machine) boardArgs(accel string) []string {
	if accel == AccelKVM && m.kvmBoard != nil {
		return m.kvmBoard
	}
	return m.board
}
