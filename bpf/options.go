package bpf

import (
	"errors"
	"fmt"
)

// Strategy selects how entries are removed from the storage map.
type Strategy string

const (
	// StrategyTracepoints deletes entries only from the consume_skb and
	// kfree_skb tracepoints.
	StrategyTracepoints Strategy = "tracepoints"
	// StrategyComplete also deletes entries on the free paths that no
	// tracepoint sees, so that no entry outlives its skb.
	StrategyComplete Strategy = "complete"
)

// Strategies lists every Strategy, in a stable order.
var Strategies = []Strategy{StrategyTracepoints, StrategyComplete}

// MapVariant selects the kind of hash map holding the per-skb values.
type MapVariant string

const (
	// MapHash is a preallocated BPF_MAP_TYPE_HASH.
	MapHash MapVariant = "hash"
	// MapHashNoPrealloc is a BPF_MAP_TYPE_HASH with BPF_F_NO_PREALLOC.
	MapHashNoPrealloc MapVariant = "hash-noprealloc"
	// MapLRU is a BPF_MAP_TYPE_LRU_HASH: a full map evicts instead of
	// failing.
	MapLRU MapVariant = "lru"
)

// MapVariants lists every MapVariant, in a stable order.
var MapVariants = []MapVariant{MapHash, MapHashNoPrealloc, MapLRU}

// DefaultMaxEntries is the storage map's size when Options.MaxEntries is 0.
const DefaultMaxEntries = 65536

// PayloadLen is the size of the user payload stored per skb.
const PayloadLen = 48

// Filter restricts which allocations create an entry. Clones and copies of
// a tracked skb are always tracked; frees are always handled.
type Filter struct {
	// TGID, if not 0, tracks only skbs allocated while a thread of this
	// process is current: its transmit skbs (which on loopback and veth are
	// also the receive skbs) and whatever softirq work runs on its behalf.
	// 0 tracks every allocation in the system.
	TGID uint32
}

// Options configure Load.
type Options struct {
	// Strategy is the free strategy; "" means StrategyTracepoints.
	Strategy Strategy
	// MapVariant is the storage map's kind; "" means MapHash.
	MapVariant MapVariant
	// MaxEntries is the storage map's size; 0 means DefaultMaxEntries.
	MaxEntries uint32
	// Filter restricts which allocations are tracked.
	Filter Filter
	// ObserveLeaks loads the extra free hooks in StrategyTracepoints too, as
	// observers that mark (not delete) entries whose skb is freed on a path
	// no tracepoint sees. Ignored by StrategyComplete, which always loads
	// them. Without it leaks cannot be attributed to a path and the
	// LeakSeen counters are unavailable.
	ObserveLeaks bool
	// VerifyPayload checks every deleted entry's payload in BPF and counts
	// mismatches in Counters.PayloadBad. It costs a few ns per free.
	VerifyPayload bool
}

// ErrInvalidOptions is wrapped by the errors Options.Validate returns.
var ErrInvalidOptions = errors.New("invalid options")

// withDefaults returns o with empty fields set to their defaults.
func (o Options) withDefaults() Options {
	if o.Strategy == "" {
		o.Strategy = StrategyTracepoints
	}
	if o.MapVariant == "" {
		o.MapVariant = MapHash
	}
	if o.MaxEntries == 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	return o
}

// Validate reports whether the options, with defaults applied, are usable.
func (o Options) Validate() error {
	o = o.withDefaults()
	switch o.Strategy {
	case StrategyTracepoints, StrategyComplete:
	default:
		return fmt.Errorf("%w: unknown strategy %q (want %q or %q)", ErrInvalidOptions, o.Strategy, StrategyTracepoints, StrategyComplete)
	}
	switch o.MapVariant {
	case MapHash, MapHashNoPrealloc, MapLRU:
	default:
		return fmt.Errorf("%w: unknown map variant %q (want %q, %q or %q)", ErrInvalidOptions, o.MapVariant, MapHash, MapHashNoPrealloc, MapLRU)
	}
	// An LRU hash keeps per-CPU free lists; tiny maps behave oddly and
	// the kernel rejects sizes its lists cannot be split into.
	if o.MaxEntries > 1<<24 {
		return fmt.Errorf("%w: max entries %d exceeds %d", ErrInvalidOptions, o.MaxEntries, 1<<24)
	}
	return nil
}

// observes reports whether the extra free hooks are loaded.
func (o Options) observes() bool {
	return o.Strategy == StrategyComplete || o.ObserveLeaks
}

// ParseStrategy returns the Strategy named s.
func ParseStrategy(s string) (Strategy, error) {
	for _, v := range Strategies {
		if string(v) == s {
			return v, nil
		}
	}
	return "", fmt.Errorf("%w: unknown strategy %q", ErrInvalidOptions, s)
}

// ParseMapVariant returns the MapVariant named s.
func ParseMapVariant(s string) (MapVariant, error) {
	for _, v := range MapVariants {
		if string(v) == s {
			return v, nil
		}
	}
	return "", fmt.Errorf("%w: unknown map variant %q", ErrInvalidOptions, s)
}
