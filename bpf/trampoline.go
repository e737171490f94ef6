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

// TrampolineHold keeps BPF trampolines in place on kernel functions with
// an empty fentry program on each, so that programs attached to those
// functions meanwhile join and leave an existing trampoline instead of
// creating and destroying one. Before 7.0 destroying one unregisters its
// ftrace ops, which waits for an RCU tasks grace period, serialized by the
// kernel: detaching a store took 1.4 s on 6.1 and 1.6 s on 6.12 under
// emulation, 0.13 s and 0.16 s with a hold in place (7.2: 0.13 s either
// way). The empty programs add a trampoline call to each function and
// change nothing else: take no timing figures while a hold is in place.
type TrampolineHold struct {
	colls []*ebpf.Collection
	links []link.Link
	held  []string
	// Failed says why a function could not be held; it keeps the usual
	// create-and-destroy cost and nothing else changes.
	Failed map[string]error
}

// HoldTrampolines holds a trampoline on each of funcs it can attach to.
func HoldTrampolines(funcs []string) *TrampolineHold {
	h := &TrampolineHold{Failed: map[string]error{}}
	for _, fn := range funcs {
		if err := h.hold(fn); err != nil {
			h.Failed[fn] = err
		}
	}
	return h
}

func (h *TrampolineHold) hold(fn string) error {
	spec := &ebpf.CollectionSpec{Programs: map[string]*ebpf.ProgramSpec{"hold": {
		Name:         "hold_trampoline",
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceFEntry,
		AttachTo:     fn,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		License:      "GPL",
	}}}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Cache: kernelBTF})
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	l, err := attachTrampoline(coll.Programs["hold"])
	if err != nil {
		coll.Close()
		return err
	}
	h.colls = append(h.colls, coll)
	h.links = append(h.links, l)
	h.held = append(h.held, fn)
	return nil
}

// Held returns the functions with a held trampoline.
func (h *TrampolineHold) Held() []string { return append([]string(nil), h.held...) }

// Close detaches and unloads the empty programs, destroying the
// trampolines no other program uses.
func (h *TrampolineHold) Close() error {
	var errs []error
	for _, l := range h.links {
		errs = append(errs, l.Close())
	}
	for _, c := range h.colls {
		c.Close()
	}
	h.links, h.colls, h.held = nil, nil, nil
	return errors.Join(errs...)
}

// TrampolineTargets returns the kernel functions that a store's fentry and
// fexit programs attach to on this kernel, for any strategy: per hook the
// first of its targets the kernel's BTF has.
func TrampolineTargets() ([]string, error) {
	kspec, err := kernelSpec()
	if err != nil {
		return nil, fmt.Errorf("load kernel BTF: %w", err)
	}
	var out []string
	for _, h := range hooks {
		if h.kind == kindTracepoint {
			continue
		}
		for _, t := range h.targets {
			if hasFunc(kspec, t) {
				out = append(out, t)
				break
			}
		}
	}
	return out, nil
}

// TrampolineTargets returns the kernel functions the store's fentry and
// fexit programs attach to.
func (s *Store) TrampolineTargets() []string {
	var out []string
	for _, h := range hooks {
		if _, ok := s.progs[h.prog]; ok && h.kind != kindTracepoint {
			out = append(out, s.targetOf[h.prog])
		}
	}
	return out
}
