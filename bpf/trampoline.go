package bpf

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// ErrNoTrampoline is wrapped by the errors of attaching an fentry or fexit
// program to a kernel function on a kernel that cannot: the program loads
// (its target is in the kernel's BTF) but the kernel has no BPF trampoline
// for kernel functions and answers ENOTSUPP. arm64 kernels before 6.4 are
// such kernels (they lack ftrace direct calls), as are arm64 builds with
// kCFI. Suites report it as a skip with this reason, not as a failure.
var ErrNoTrampoline = errors.New("this kernel cannot attach fentry/fexit programs to kernel functions " +
	"(no BPF trampoline for them: arm64 has them from 6.4 on, through ftrace direct calls)")

// attachTrampoline attaches an fentry or fexit program, telling a kernel
// without trampolines apart from other failures.
func attachTrampoline(p *ebpf.Program) (link.Link, error) {
	l, err := link.AttachTracing(link.TracingOptions{Program: p})
	if errors.Is(err, ebpf.ErrNotSupported) {
		return nil, fmt.Errorf("%w: %w", ErrNoTrampoline, err)
	}
	return l, err
}

var trampolines struct {
	once sync.Once
	err  error
}

// Trampolines reports whether the kernel attaches fentry programs to kernel
// functions: nil if it does, an error wrapping ErrNoTrampoline if it cannot.
// It attaches an empty program to bpf_fentry_test1 (there for
// BPF_PROG_TEST_RUN since 5.5) once per process. Where the probe itself
// cannot load (no BTF, no such function) it says nothing, and loading the
// real programs reports what is wrong.
func Trampolines() error {
	trampolines.once.Do(func() {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         "probe_fentry",
			Type:         ebpf.Tracing,
			AttachType:   ebpf.AttachTraceFEntry,
			AttachTo:     "bpf_fentry_test1",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
			License:      "GPL",
		})
		if err != nil {
			return
		}
		defer p.Close()
		l, err := attachTrampoline(p)
		if err != nil {
			if errors.Is(err, ErrNoTrampoline) {
				trampolines.err = err
			}
			return
		}
		l.Close()
	})
	return trampolines.err
}
