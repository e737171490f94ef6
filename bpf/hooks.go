package bpf

import "fmt"

// hookKind is how a program attaches.
type hookKind int

const (
	kindFentry hookKind = iota
	kindFexit
	kindTracepoint
)

// String returns the section prefix of the kind, e.g. "fexit".
func (k hookKind) String() string {
	switch k {
	case kindFentry:
		return "fentry"
	case kindFexit:
		return "fexit"
	default:
		return "tp_btf"
	}
}

// hookRole orders attaching: free hooks go first and creators last, so no
// entry is ever created that could not yet be deleted.
type hookRole int

const (
	roleFree hookRole = iota
	roleObserve
	roleClone
	roleCreate
)

// hook describes one program of the object and where it attaches.
type hook struct {
	prog      string   // program name in skbstore.c
	targets   []string // kernel functions or tracepoints, first existing wins
	kind      hookKind
	role      hookRole
	extra     bool // an extra free hook: loaded only when observing/complete
	required  bool // missing means Load fails
	completeR bool // required in StrategyComplete
	// since is the first kernel series (of the matrix, read from each
	// kernel's BTF) that has an optional hook: missing there or later, it
	// fails Load instead of being skipped, so that a renamed or inlined
	// function cannot quietly shrink what the suites check.
	since string
}

// hooks lists every program. Order is the attach order within a role.
var hooks = []hook{
	{prog: "tp_consume_skb", targets: []string{"consume_skb"}, kind: kindTracepoint, role: roleFree, required: true},
	{prog: "tp_kfree_skb", targets: []string{"kfree_skb"}, kind: kindTracepoint, role: roleFree, required: true},
	{prog: "fentry_kfree_skb_direct", targets: []string{"__kfree_skb"}, kind: kindFentry, role: roleFree, extra: true, completeR: true, since: "5.10"},
	{prog: "fentry_kfree_skb_partial", targets: []string{"kfree_skb_partial"}, kind: kindFentry, role: roleFree, extra: true, completeR: true, since: "5.10"},
	{prog: "fentry_napi_kfree_skb", targets: []string{"__napi_kfree_skb"}, kind: kindFentry, role: roleFree, extra: true, since: "6.12"},
	{prog: "fentry_release_head_state", targets: []string{"skb_release_head_state"}, kind: kindFentry, role: roleFree, extra: true, completeR: true, since: "5.10"},
	{prog: "fentry_kfree_skbmem", targets: []string{"kfree_skbmem"}, kind: kindFentry, role: roleFree, extra: true, completeR: true, since: "5.10"},
	{prog: "fentry_defer_free", targets: []string{"skb_attempt_defer_free"}, kind: kindFentry, role: roleObserve, extra: true, since: "6.1"},
	{prog: "fexit_skb_clone", targets: []string{"skb_clone"}, kind: kindFexit, role: roleClone, required: true},
	{prog: "fexit_skb_copy", targets: []string{"skb_copy"}, kind: kindFexit, role: roleClone, since: "5.10"},
	{prog: "fexit_pskb_copy_fclone", targets: []string{"__pskb_copy_fclone"}, kind: kindFexit, role: roleClone, since: "5.10"},
	{prog: "fexit_alloc_skb", targets: []string{"__alloc_skb"}, kind: kindFexit, role: roleCreate, required: true},
	{prog: "fexit_build_skb", targets: []string{"__build_skb", "build_skb"}, kind: kindFexit, role: roleCreate, since: "5.10"},
	{prog: "fexit_napi_build_skb", targets: []string{"napi_build_skb"}, kind: kindFexit, role: roleCreate, since: "6.1"},
}

// isRequired reports whether h must load and attach for strategy s on the
// kernel of the given release.
func (h hook) isRequired(s Strategy, release string) bool {
	return h.required || (s == StrategyComplete && h.completeR) || (h.since != "" && atLeast(release, h.since))
}

// atLeast reports whether a kernel release ("6.12.3-cloud-amd64") is of
// series since ("6.1") or later. A release that does not parse is not.
func atLeast(release, since string) bool {
	r, ok1 := series(release)
	s, ok2 := series(since)
	return ok1 && ok2 && (r[0] > s[0] || r[0] == s[0] && r[1] >= s[1])
}

func series(v string) ([2]int, bool) {
	var out [2]int
	for i := range out {
		n, j := 0, 0
		for j < len(v) && v[j] >= '0' && v[j] <= '9' {
			n = n*10 + int(v[j]-'0')
			j++
		}
		if j == 0 {
			return out, false
		}
		out[i] = n
		v = v[j:]
		if i == 0 {
			if len(v) == 0 || v[0] != '.' {
				return out, false
			}
			v = v[1:]
		}
	}
	return out, true
}

// wanted reports whether h is part of a load with options o.
func (h hook) wanted(o Options) bool {
	return !h.extra || o.observes()
}

// requiredWhy says why a missing h fails Load.
func (h hook) requiredWhy(s Strategy, release string) string {
	if h.required || (s == StrategyComplete && h.completeR) {
		return "required hook missing"
	}
	return fmt.Sprintf("hook missing on %s although every kernel since %s has it", release, h.since)
}
