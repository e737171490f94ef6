package bpf

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
}

// hooks lists every program. Order is the attach order within a role.
var hooks = []hook{
	{prog: "tp_consume_skb", targets: []string{"consume_skb"}, kind: kindTracepoint, role: roleFree, required: true},
	{prog: "tp_kfree_skb", targets: []string{"kfree_skb"}, kind: kindTracepoint, role: roleFree, required: true},
	{prog: "fentry_kfree_skb_direct", targets: []string{"__kfree_skb"}, kind: kindFentry, role: roleFree, extra: true, completeR: true},
	{prog: "fentry_kfree_skb_partial", targets: []string{"kfree_skb_partial"}, kind: kindFentry, role: roleFree, extra: true, completeR: true},
	{prog: "fentry_napi_kfree_skb", targets: []string{"__napi_kfree_skb"}, kind: kindFentry, role: roleFree, extra: true},
	{prog: "fentry_release_head_state", targets: []string{"skb_release_head_state"}, kind: kindFentry, role: roleFree, extra: true, completeR: true},
	{prog: "fentry_kfree_skbmem", targets: []string{"kfree_skbmem"}, kind: kindFentry, role: roleFree, extra: true, completeR: true},
	{prog: "fentry_defer_free", targets: []string{"skb_attempt_defer_free"}, kind: kindFentry, role: roleObserve, extra: true},
	{prog: "fexit_skb_clone", targets: []string{"skb_clone"}, kind: kindFexit, role: roleClone, required: true},
	{prog: "fexit_skb_copy", targets: []string{"skb_copy"}, kind: kindFexit, role: roleClone},
	{prog: "fexit_pskb_copy_fclone", targets: []string{"__pskb_copy_fclone"}, kind: kindFexit, role: roleClone},
	{prog: "fexit_alloc_skb", targets: []string{"__alloc_skb"}, kind: kindFexit, role: roleCreate, required: true},
	{prog: "fexit_build_skb", targets: []string{"__build_skb", "build_skb"}, kind: kindFexit, role: roleCreate},
	{prog: "fexit_napi_build_skb", targets: []string{"napi_build_skb"}, kind: kindFexit, role: roleCreate},
}

// isRequired reports whether h must load and attach for strategy s.
func (h hook) isRequired(s Strategy) bool {
	return h.required || (s == StrategyComplete && h.completeR)
}

// wanted reports whether h is part of a load with options o.
func (h hook) wanted(o Options) bool {
	return !h.extra || o.observes()
}
