package bpf

import (
	"encoding/json"
	"fmt"
	"sort"
)

// CreatePath names the path that created an entry.
type CreatePath uint32

// Create paths; the values are those of enum create_path in skbstore.c.
const (
	CreateNone      = CreatePath(skbstoreCreatePathCP_NONE)
	CreateAlloc     = CreatePath(skbstoreCreatePathCP_ALLOC)
	CreateBuild     = CreatePath(skbstoreCreatePathCP_BUILD)
	CreateNapiBuild = CreatePath(skbstoreCreatePathCP_NAPI_BUILD)
	CreateClone     = CreatePath(skbstoreCreatePathCP_CLONE)
	CreateCopy      = CreatePath(skbstoreCreatePathCP_COPY)
	CreatePskbCopy  = CreatePath(skbstoreCreatePathCP_PSKB_COPY)
)

var createPathNames = [...]string{"none", "alloc", "build", "napi_build", "clone", "copy", "pskb_copy"}

// String returns the path's short name, e.g. "clone".
func (p CreatePath) String() string {
	if int(p) < len(createPathNames) {
		return createPathNames[p]
	}
	return fmt.Sprintf("create_path(%d)", uint32(p))
}

// MarshalText implements encoding.TextMarshaler.
func (p CreatePath) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// FreePath names the path that deleted an entry, or on which an observer
// saw its skb released.
type FreePath uint32

// Free paths; the values are those of enum free_path in skbstore.c.
const (
	FreeNone        = FreePath(skbstoreFreePathFP_NONE)
	FreeConsume     = FreePath(skbstoreFreePathFP_CONSUME)
	FreeKfreeSkb    = FreePath(skbstoreFreePathFP_KFREE_SKB)
	FreeKfreeDirect = FreePath(skbstoreFreePathFP___KFREE_SKB)
	FreePartial     = FreePath(skbstoreFreePathFP_PARTIAL)
	FreeNapiKfree   = FreePath(skbstoreFreePathFP_NAPI_KFREE)
	FreeReleaseHead = FreePath(skbstoreFreePathFP_RELEASE_HEAD)
	FreeKfreeSkbmem = FreePath(skbstoreFreePathFP_KFREE_SKBMEM)
)

var freePathNames = [...]string{"none", "consume_skb", "kfree_skb", "__kfree_skb", "kfree_skb_partial", "__napi_kfree_skb", "skb_release_head_state", "kfree_skbmem"}

// freePathProg maps each free path to the program that implements it.
var freePathProg = [...]string{"", "tp_consume_skb", "tp_kfree_skb", "fentry_kfree_skb_direct", "fentry_kfree_skb_partial", "fentry_napi_kfree_skb", "fentry_release_head_state", "fentry_kfree_skbmem"}

// createPathProg maps each create path to the program that implements it.
var createPathProg = [...]string{"", "fexit_alloc_skb", "fexit_build_skb", "fexit_napi_build_skb", "fexit_skb_clone", "fexit_skb_copy", "fexit_pskb_copy_fclone"}

// String returns the kernel function or tracepoint name of the path.
func (p FreePath) String() string {
	if int(p) < len(freePathNames) {
		return freePathNames[p]
	}
	return fmt.Sprintf("free_path(%d)", uint32(p))
}

// MarshalText implements encoding.TextMarshaler.
func (p FreePath) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// Counters are the BPF programs' event counts, summed over CPUs. Per-path
// arrays are indexed by CreatePath or FreePath. A count the loaded programs
// cannot measure (its hook is missing or not loaded) is listed in
// Unavailable and must not be read as zero.
type Counters struct {
	// AllocCalls counts allocations that passed the filter.
	AllocCalls uint64
	// AllocFiltered counts allocations the filter rejected.
	AllocFiltered uint64
	// Created counts new entries per create path.
	Created [NumCreatePaths]uint64
	// Stale counts creations that found the key already present: an skb
	// at that address was freed without the entry being deleted. The old
	// entry is replaced.
	Stale [NumCreatePaths]uint64
	// StaleAfterLeak counts the Stale ones whose old entry an observer had
	// seen freed on a path no tracepoint sees.
	StaleAfterLeak uint64
	// StaleFiltered counts filtered-out allocations whose address still
	// had an entry (stale entries the filter hides).
	StaleFiltered uint64
	// MapFull counts creations that failed because the map was full.
	MapFull [NumCreatePaths]uint64
	// UpdateErrors counts creations that failed for another reason.
	UpdateErrors uint64
	// UpdateErrno is the errno of the last such failure.
	UpdateErrno uint64
	// CloneUntracked counts clones and copies of skbs with no entry.
	CloneUntracked uint64
	// CloneOfDead counts clones of an skb whose entry was already marked
	// freed: the clone inherited a dead skb's data.
	CloneOfDead uint64
	// CopyOverAlloc counts copies whose entry, made by the nested
	// __alloc_skb, was rewritten with the parent's data.
	CopyOverAlloc uint64
	// Deleted counts entries deleted per free path.
	Deleted [NumFreePaths]uint64
	// DeletedDead counts deleted entries that had been marked freed.
	DeletedDead uint64
	// LeakSeen counts, in StrategyTracepoints with observers, entries whose
	// skb was released on this path while the entry stayed in the map.
	LeakSeen [NumFreePaths]uint64
	// Deferred counts tracked skbs handed to skb_attempt_defer_free.
	Deferred uint64
	// PayloadBad counts entries whose payload was wrong when deleted.
	PayloadBad uint64
	// ReasonTableFull counts drop reasons that could not be recorded.
	ReasonTableFull uint64

	// Unavailable lists the counters (by their Flat names) that cannot be
	// measured with the programs loaded.
	Unavailable []string
}

// NumCreatePaths is the length of the per-create-path counter arrays.
const NumCreatePaths = int(skbstoreCreatePathNR_CREATE_PATHS)

// NumFreePaths is the length of the per-free-path counter arrays.
const NumFreePaths = int(skbstoreFreePathNR_FREE_PATHS)

func (c *Counters) add(r *skbstoreCounters) {
	c.AllocCalls += r.AllocCalls
	c.AllocFiltered += r.AllocFiltered
	for i := range c.Created {
		c.Created[i] += r.Created[i]
		c.Stale[i] += r.Stale[i]
		c.MapFull[i] += r.MapFull[i]
	}
	c.StaleAfterLeak += r.StaleAfterLeak
	c.StaleFiltered += r.StaleFiltered
	c.UpdateErrors += r.UpdateErr
	if r.UpdateErrno != 0 {
		c.UpdateErrno = r.UpdateErrno
	}
	c.CloneUntracked += r.CloneUntracked
	c.CloneOfDead += r.CloneOfDead
	c.CopyOverAlloc += r.CopyOverAlloc
	for i := range c.Deleted {
		c.Deleted[i] += r.Deleted[i]
		c.LeakSeen[i] += r.LeakSeen[i]
	}
	c.DeletedDead += r.DeletedDead
	c.Deferred += r.Deferred
	c.PayloadBad += r.PayloadBad
	c.ReasonTableFull += r.ReasonFull
}

// Inserted is the number of entries that were ever added to the map.
func (c Counters) Inserted() uint64 { return sum(c.Created[:]) }

// TotalDeleted is the number of entries deleted on any path.
func (c Counters) TotalDeleted() uint64 { return sum(c.Deleted[:]) }

// TotalStale is the number of stale entries found on any create path.
func (c Counters) TotalStale() uint64 { return sum(c.Stale[:]) }

// TotalMapFull is the number of creations that failed on a full map.
func (c Counters) TotalMapFull() uint64 { return sum(c.MapFull[:]) }

// TotalLeakSeen is the number of entries observers saw freed behind the
// tracepoints' back.
func (c Counters) TotalLeakSeen() uint64 { return sum(c.LeakSeen[:]) }

// Live is the number of entries the counters say should be in the map.
// For MapLRU it is an upper bound: the LRU map evicts without telling.
func (c Counters) Live() int64 { return int64(c.Inserted()) - int64(c.TotalDeleted()) }

func sum(s []uint64) (n uint64) {
	for _, v := range s {
		n += v
	}
	return n
}

// Flat returns every counter under a dotted name such as "created.clone"
// or "deleted.kfree_skb"; Unavailable counters are left out.
func (c Counters) Flat() map[string]uint64 {
	m := map[string]uint64{
		"alloc_calls":       c.AllocCalls,
		"alloc_filtered":    c.AllocFiltered,
		"stale_after_leak":  c.StaleAfterLeak,
		"stale_filtered":    c.StaleFiltered,
		"update_errors":     c.UpdateErrors,
		"update_errno":      c.UpdateErrno,
		"clone_untracked":   c.CloneUntracked,
		"clone_of_dead":     c.CloneOfDead,
		"copy_over_alloc":   c.CopyOverAlloc,
		"deleted_dead":      c.DeletedDead,
		"deferred":          c.Deferred,
		"payload_bad":       c.PayloadBad,
		"reason_table_full": c.ReasonTableFull,
	}
	for i := 1; i < NumCreatePaths; i++ {
		n := CreatePath(i).String()
		m["created."+n] = c.Created[i]
		m["stale."+n] = c.Stale[i]
		m["map_full."+n] = c.MapFull[i]
	}
	for i := 1; i < NumFreePaths; i++ {
		n := FreePath(i).String()
		m["deleted."+n] = c.Deleted[i]
		m["leak_seen."+n] = c.LeakSeen[i]
	}
	for _, u := range c.Unavailable {
		delete(m, u)
	}
	return m
}

// IsAvailable reports whether the counter with Flat name name was measured.
func (c Counters) IsAvailable(name string) bool {
	for _, u := range c.Unavailable {
		if u == name {
			return false
		}
	}
	return true
}

// MarshalJSON renders the counters as an object of Flat names, with the
// string "unavailable" for counters that were not measured.
func (c Counters) MarshalJSON() ([]byte, error) {
	m := make(map[string]any)
	for k, v := range c.Flat() {
		m[k] = v
	}
	for _, u := range c.Unavailable {
		m[u] = "unavailable"
	}
	return json.Marshal(m)
}

// unavailableCounters lists the Flat names that cannot be measured when the
// given programs are not loaded, or without observers.
func unavailableCounters(loaded map[string]bool, observing, strategyComplete bool, hasReasons bool) []string {
	var out []string
	for i := 1; i < NumCreatePaths; i++ {
		if !loaded[createPathProg[i]] {
			n := CreatePath(i).String()
			out = append(out, "created."+n, "stale."+n, "map_full."+n)
		}
	}
	for i := 1; i < NumFreePaths; i++ {
		n := FreePath(i).String()
		if !loaded[freePathProg[i]] {
			out = append(out, "deleted."+n, "leak_seen."+n)
			continue
		}
		// Tracepoints are where the strategies delete: observers never
		// run there. In "complete" the extra hooks delete, not observe.
		if i == int(FreeConsume) || i == int(FreeKfreeSkb) || strategyComplete {
			out = append(out, "leak_seen."+n)
		} else if !strategyComplete {
			out = append(out, "deleted."+n)
		}
	}
	if !observing || strategyComplete {
		out = append(out, "stale_after_leak", "deleted_dead", "clone_of_dead")
	}
	if !loaded["fentry_defer_free"] {
		out = append(out, "deferred")
	}
	if !hasReasons {
		out = append(out, "reason_table_full")
	}
	sort.Strings(out)
	return out
}
