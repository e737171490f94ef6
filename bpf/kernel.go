package bpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// KernelInfo is what the loader learned about the running kernel.
type KernelInfo struct {
	// Release is the kernel release (uname -r).
	Release string `json:"release"`
	// KfreeSkbArgs is the number of arguments of the kfree_skb tracepoint:
	// 2 (skb, location) on 5.10, 3 with the drop reason (5.17+), 4 with
	// rx_sk (6.11+).
	KfreeSkbArgs int `json:"kfree_skb_args"`
	// ConsumeSkbArgs is the number of arguments of the consume_skb
	// tracepoint: 1 before 6.3, 2 (skb, location) after.
	ConsumeSkbArgs int `json:"consume_skb_args"`
	// HasDropReasons reports whether kfree_skb carries a drop reason.
	HasDropReasons bool `json:"has_drop_reasons"`
}

// tracepointArgs returns the number of arguments of raw tracepoint name as
// BTF-enabled programs see them: the btf_trace_<name> typedef's function
// prototype has a leading "void *__data" that is not passed on.
func tracepointArgs(spec *btf.Spec, name string) (int, error) {
	var td *btf.Typedef
	if err := spec.TypeByName("btf_trace_"+name, &td); err != nil {
		return 0, fmt.Errorf("tracepoint %s: %w", name, err)
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return 0, fmt.Errorf("tracepoint %s: typedef is %T, not a pointer", name, td.Type)
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	if !ok {
		return 0, fmt.Errorf("tracepoint %s: typedef points to %T, not a function prototype", name, ptr.Target)
	}
	if len(proto.Params) < 1 {
		return 0, fmt.Errorf("tracepoint %s: prototype has no __data parameter", name)
	}
	return len(proto.Params) - 1, nil
}

// hasFunc reports whether the kernel BTF has a function called name.
func hasFunc(spec *btf.Spec, name string) bool {
	var fn *btf.Func
	return spec.TypeByName(name, &fn) == nil
}

// hasTracepoint reports whether the kernel BTF describes raw tracepoint name.
func hasTracepoint(spec *btf.Spec, name string) bool {
	var td *btf.Typedef
	return spec.TypeByName("btf_trace_"+name, &td) == nil
}

// dropReasonNames maps the values of enum skb_drop_reason to their names
// without the SKB_DROP_REASON_ prefix. The numbering changes between kernel
// versions, so it must come from the running kernel's BTF.
func dropReasonNames(spec *btf.Spec) (map[uint32]string, error) {
	var enum *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &enum); err != nil {
		return nil, fmt.Errorf("enum skb_drop_reason: %w", err)
	}
	names := make(map[uint32]string, len(enum.Values))
	for _, v := range enum.Values {
		n := strings.TrimPrefix(v.Name, "SKB_DROP_REASON_")
		if n == v.Name {
			// SKB_CONSUMED and subsystem markers keep their names.
			n = v.Name
		}
		if _, dup := names[uint32(v.Value)]; !dup {
			names[uint32(v.Value)] = n
		}
	}
	return names, nil
}

// errMissing is wrapped when a hook does not exist in the kernel.
var errMissing = errors.New("not in kernel BTF")
