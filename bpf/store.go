package bpf

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// SkippedHook is a program that was not loaded because its hook does not
// exist on the running kernel.
type SkippedHook struct {
	// Program is the program's name in skbstore.c.
	Program string `json:"program"`
	// Hook is the kernel function or tracepoint it would attach to.
	Hook string `json:"hook"`
	// Reason says why it was skipped.
	Reason string `json:"reason"`
}

// ProgramInfo describes a loaded program.
type ProgramInfo struct {
	// Program is the program's name in skbstore.c.
	Program string `json:"program"`
	// Hook is the kernel function or tracepoint it attaches to.
	Hook string `json:"hook"`
	// Kind is "fentry", "fexit" or "tp_btf".
	Kind string `json:"kind"`
	// Attached reports whether the program is attached.
	Attached bool `json:"attached"`
}

// ProgramError is returned by Load when a program is rejected by the
// verifier or cannot be loaded for another reason.
type ProgramError struct {
	// Program is the program's name in skbstore.c.
	Program string
	// Hook is the kernel function or tracepoint it targets.
	Hook string
	// Log is the full verifier log, if the kernel produced one.
	Log string
	// Err is the underlying error.
	Err error
}

// Error implements error.
func (e *ProgramError) Error() string {
	return fmt.Sprintf("load %s (%s): %v", e.Program, e.Hook, e.Err)
}

// Unwrap returns the underlying error.
func (e *ProgramError) Unwrap() error { return e.Err }

// LoadError is returned by Load when the object could not be loaded. It
// carries the verifier logs of every program tried so far, so that a
// rejection can be reported with its log.
type LoadError struct {
	// Failed are the programs that could not be loaded.
	Failed []*ProgramError
	// Logs maps every program tried to its verifier log.
	Logs map[string]string
	// Skipped are the programs left out because their hook is missing.
	Skipped []SkippedHook
}

// Error implements error.
func (e *LoadError) Error() string {
	var parts []string
	for _, f := range e.Failed {
		parts = append(parts, f.Error())
	}
	return "skbstore: " + strings.Join(parts, "; ")
}

// Unwrap returns the program errors.
func (e *LoadError) Unwrap() []error {
	errs := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		errs[i] = f
	}
	return errs
}

// ErrUnavailable is returned for data the running kernel cannot provide.
var ErrUnavailable = errors.New("unavailable on this kernel")

// Store is the loaded skbstore object: maps, programs and, after Attach,
// links. It is safe for concurrent reads.
type Store struct {
	opts    Options
	kernel  KernelInfo
	reasons map[uint32]string

	coll     *ebpf.Collection // maps only
	progs    map[string]*ebpf.Program
	targetOf map[string]string
	logs     map[string]string
	skipped  []SkippedHook

	mu    sync.Mutex
	links []namedLink
}

type namedLink struct {
	prog string
	l    link.Link
}

// kernelBTF holds the running kernel's BTF, decoded once per process and
// shared by every load: decoding it took 0.25 s of each store's load under
// emulation (19 stores in the skbstore suite). A btf.Cache is safe for
// concurrent use and never copies the spec it returns.
var kernelBTF = btf.NewCache()

// kernelSpec returns the running kernel's BTF (kernelBTF).
func kernelSpec() (*btf.Spec, error) { return kernelBTF.Kernel() }

// Kernel inspects the running kernel's BTF without loading anything.
func Kernel() (KernelInfo, error) {
	spec, err := kernelSpec()
	if err != nil {
		return KernelInfo{}, fmt.Errorf("load kernel BTF: %w", err)
	}
	return kernelInfo(spec)
}

func kernelInfo(spec *btf.Spec) (KernelInfo, error) {
	var ki KernelInfo
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		ki.Release = unix.ByteSliceToString(u.Release[:])
	}
	n, err := tracepointArgs(spec, "kfree_skb")
	if err != nil {
		return ki, err
	}
	ki.KfreeSkbArgs = n
	ki.HasDropReasons = n >= 3
	if ki.ConsumeSkbArgs, err = tracepointArgs(spec, "consume_skb"); err != nil {
		return ki, err
	}
	return ki, nil
}

// Load loads the maps and the programs opts asks for into the kernel,
// capturing every program's verifier log. Programs whose hook the kernel
// lacks are left out and reported by Skipped, unless the strategy needs
// them. It does not attach anything: call Attach.
//
// If a program fails to load, Load returns a *LoadError with the verifier
// logs of all programs it tried.
func Load(opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()

	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise RLIMIT_MEMLOCK: %w", err)
	}
	// Every strategy creates entries from fexit programs: on a kernel that
	// cannot attach them, say so before what its BTF lacks (arm64 5.10
	// also inlines kfree_skbmem) turns into load errors.
	if err := Trampolines(); err != nil {
		return nil, fmt.Errorf("skbstore: %w", err)
	}
	kspec, err := kernelSpec()
	if err != nil {
		return nil, fmt.Errorf("load kernel BTF: %w", err)
	}
	ki, err := kernelInfo(kspec)
	if err != nil {
		return nil, fmt.Errorf("inspect kernel: %w", err)
	}

	spec, err := loadSkbstore()
	if err != nil {
		return nil, err
	}
	if err := configure(spec, opts, ki); err != nil {
		return nil, err
	}

	s := &Store{
		opts:     opts,
		kernel:   ki,
		progs:    make(map[string]*ebpf.Program),
		targetOf: make(map[string]string),
		logs:     make(map[string]string),
	}
	if ki.HasDropReasons {
		if s.reasons, err = dropReasonNames(kspec); err != nil {
			return nil, fmt.Errorf("inspect kernel: %w", err)
		}
	}

	// Decide which programs to load and where they attach.
	loadErr := &LoadError{Logs: s.logs}
	var order []hook
	for _, h := range hooks {
		if !h.wanted(opts) {
			delete(spec.Programs, h.prog)
			continue
		}
		target := ""
		for _, t := range h.targets {
			if (h.kind == kindTracepoint && hasTracepoint(kspec, t)) || (h.kind != kindTracepoint && hasFunc(kspec, t)) {
				target = t
				break
			}
		}
		if target == "" {
			delete(spec.Programs, h.prog)
			sk := SkippedHook{Program: h.prog, Hook: strings.Join(h.targets, "|"), Reason: fmt.Sprintf("%s %s: %v", h.kind, strings.Join(h.targets, " or "), errMissing)}
			if h.isRequired(opts.Strategy, ki.Release) {
				loadErr.Failed = append(loadErr.Failed, &ProgramError{Program: h.prog, Hook: sk.Hook, Err: fmt.Errorf("%s: %s", h.requiredWhy(opts.Strategy, ki.Release), sk.Reason)})
			}
			s.skipped = append(s.skipped, sk)
			continue
		}
		ps := spec.Programs[h.prog]
		if ps == nil {
			return nil, fmt.Errorf("program %s missing from the object", h.prog)
		}
		ps.AttachTo = target
		s.targetOf[h.prog] = target
		order = append(order, h)
	}
	loadErr.Skipped = s.skipped
	if len(loadErr.Failed) > 0 {
		return nil, loadErr
	}

	// Maps first, so that every program can be loaded on its own and a
	// rejected one does not hide the others' logs.
	cache := kernelBTF
	mapsOnly := spec.Copy()
	mapsOnly.Programs = nil
	coll, err := ebpf.NewCollectionWithOptions(mapsOnly, ebpf.CollectionOptions{Cache: cache})
	if err != nil {
		return nil, fmt.Errorf("create maps: %w", err)
	}
	s.coll = coll

	for _, h := range order {
		prog, log, err := loadProgram(spec, h.prog, coll.Maps, cache)
		s.logs[h.prog] = log
		if err != nil {
			if h.kind != kindTracepoint && errors.Is(err, unix.EPERM) {
				err = fmt.Errorf("%w (the kernel refused a BPF trampoline to root: fentry/fexit are forbidden on this kernel or by a security policy; run the suites in a vmtest guest)", err)
			}
			pe := &ProgramError{Program: h.prog, Hook: s.targetOf[h.prog], Log: log, Err: err}
			// A function that is in BTF but has no address (fully
			// inlined) is a missing hook too.
			if strings.Contains(log, "cannot be found") && !h.isRequired(opts.Strategy, ki.Release) {
				s.skipped = append(s.skipped, SkippedHook{Program: h.prog, Hook: pe.Hook, Reason: fmt.Sprintf("%s %s: in BTF but not attachable: %v", h.kind, pe.Hook, err)})
				continue
			}
			loadErr.Failed = append(loadErr.Failed, pe)
			continue
		}
		s.progs[h.prog] = prog
	}
	loadErr.Skipped = s.skipped
	if len(loadErr.Failed) > 0 {
		s.Close()
		return nil, loadErr
	}
	return s, nil
}

// configure sets the map type, size and the load-time constants.
func configure(spec *ebpf.CollectionSpec, opts Options, ki KernelInfo) error {
	m := spec.Maps["skb_store"]
	if m == nil {
		return errors.New("map skb_store missing from the object")
	}
	m.MaxEntries = opts.MaxEntries
	switch opts.MapVariant {
	case MapHash:
		m.Type, m.Flags = ebpf.Hash, 0
	case MapHashNoPrealloc:
		m.Type, m.Flags = ebpf.Hash, unix.BPF_F_NO_PREALLOC
	case MapLRU:
		m.Type, m.Flags = ebpf.LRUHash, 0
	}
	strategy := uint32(0)
	if opts.Strategy == StrategyComplete {
		strategy = 1
	}
	verify := uint32(0)
	if opts.VerifyPayload {
		verify = 1
	}
	consts := map[string]uint32{
		"filter_tgid":     opts.Filter.TGID,
		"strategy":        strategy,
		"kfree_skb_nargs": uint32(ki.KfreeSkbArgs),
		"verify_payload":  verify,
	}
	for name, v := range consts {
		vs := spec.Variables[name]
		if vs == nil {
			return fmt.Errorf("variable %s missing from the object", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

// loadProgram loads one program against already created maps. It asks for
// verifier statistics; if the program is rejected it loads it again with
// the full branch-level log so that the rejection can be explained.
func loadProgram(spec *ebpf.CollectionSpec, name string, maps map[string]*ebpf.Map, cache *btf.Cache) (*ebpf.Program, string, error) {
	one := spec.Copy()
	one.Programs = map[string]*ebpf.ProgramSpec{name: spec.Programs[name]}
	try := func(level ebpf.LogLevel) (*ebpf.Program, string, error) {
		coll, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{
			Programs:        ebpf.ProgramOptions{LogLevel: level},
			MapReplacements: maps,
			Cache:           cache,
		})
		if err != nil {
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				return nil, fmt.Sprintf("%+v", ve), err
			}
			return nil, "", err
		}
		defer coll.Close()
		p := coll.Programs[name]
		if p == nil {
			return nil, "", fmt.Errorf("program %s not in collection", name)
		}
		// Detach the program from the collection, which closes its maps
		// clones on Close.
		prog, err := p.Clone()
		if err != nil {
			return nil, "", fmt.Errorf("clone %s: %w", name, err)
		}
		return prog, p.VerifierLog, nil
	}
	prog, log, err := try(ebpf.LogLevelStats)
	if err == nil {
		return prog, log, nil
	}
	if _, full, err2 := try(ebpf.LogLevelBranch | ebpf.LogLevelStats); err2 != nil && full != "" {
		log = full
	}
	return nil, log, err
}

// Attach attaches every loaded program: free hooks first, then clone and
// copy hooks, then the allocators, so that no entry is created that cannot
// yet be deleted. On error, whatever was attached is detached again.
func (s *Store) Attach() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.links) > 0 {
		return errors.New("already attached")
	}
	var order []hook
	for _, h := range hooks {
		if _, ok := s.progs[h.prog]; ok {
			order = append(order, h)
		}
	}
	sort.SliceStable(order, func(i, j int) bool { return order[i].role < order[j].role })
	for _, h := range order {
		var l link.Link
		var err error
		if h.kind == kindTracepoint {
			l, err = link.AttachTracing(link.TracingOptions{Program: s.progs[h.prog]})
		} else {
			l, err = attachTrampoline(s.progs[h.prog])
		}
		if err != nil {
			s.detachLocked()
			return fmt.Errorf("attach %s to %s %s: %w", h.prog, h.kind, s.targetOf[h.prog], err)
		}
		s.links = append(s.links, namedLink{h.prog, l})
	}
	return nil
}

// Detach detaches all programs, allocators first. The maps stay readable.
func (s *Store) Detach() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.detachLocked()
}

func (s *Store) detachLocked() error {
	var errs []error
	for i := len(s.links) - 1; i >= 0; i-- {
		if err := s.links[i].l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", s.links[i].prog, err))
		}
	}
	s.links = nil
	return errors.Join(errs...)
}

// Reset empties the store's maps and zeroes its counters, as a fresh Load
// leaves them, without detaching: the attached programs can serve case
// after case (detaching a trampoline program waits for an RCU grace period,
// about 0.1 s each under emulation). Call it while no skb of the filtered
// task is in flight; programs running meanwhile see an empty map.
func (s *Store) Reset() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.coll == nil {
		return errors.New("reset: store is closed")
	}
	var keys []uint64
	var k uint64
	it := s.coll.Maps["skb_store"].Iterate()
	for it.Next(&k, new(skbstoreSkbValue)) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reset skb_store: %w", err)
	}
	for _, k := range keys {
		if err := s.coll.Maps["skb_store"].Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("reset skb_store: %w", err)
		}
	}
	var reasons []uint32
	var r uint32
	var n uint64
	it = s.coll.Maps["drop_reasons"].Iterate()
	for it.Next(&r, &n) {
		reasons = append(reasons, r)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reset drop_reasons: %w", err)
	}
	for _, r := range reasons {
		if err := s.coll.Maps["drop_reasons"].Delete(r); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("reset drop_reasons: %w", err)
		}
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("reset counters: %w", err)
	}
	if err := s.coll.Maps["counter_map"].Put(uint32(0), make([]skbstoreCounters, ncpu)); err != nil {
		return fmt.Errorf("reset counters: %w", err)
	}
	return nil
}

// Close detaches and unloads everything.
func (s *Store) Close() error {
	errs := []error{s.Detach()}
	for name, p := range s.progs {
		if err := p.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", name, err))
		}
	}
	s.progs = map[string]*ebpf.Program{}
	if s.coll != nil {
		s.coll.Close()
		s.coll = nil
	}
	return errors.Join(errs...)
}

// Options returns the options the store was loaded with, defaults applied.
func (s *Store) Options() Options { return s.opts }

// Kernel returns what the loader learned about the running kernel.
func (s *Store) Kernel() KernelInfo { return s.kernel }

// VerifierLogs maps each program that was loaded (or rejected) to its
// verifier log: statistics for loaded ones, the full log for rejected ones.
func (s *Store) VerifierLogs() map[string]string {
	out := make(map[string]string, len(s.logs))
	for k, v := range s.logs {
		out[k] = v
	}
	return out
}

// Skipped lists the programs left out because their hook is missing.
func (s *Store) Skipped() []SkippedHook { return append([]SkippedHook(nil), s.skipped...) }

// Programs describes the loaded programs in attach order.
func (s *Store) Programs() []ProgramInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	attached := map[string]bool{}
	for _, l := range s.links {
		attached[l.prog] = true
	}
	var out []ProgramInfo
	for _, h := range hooks {
		if _, ok := s.progs[h.prog]; ok {
			out = append(out, ProgramInfo{Program: h.prog, Hook: s.targetOf[h.prog], Kind: h.kind.String(), Attached: attached[h.prog]})
		}
	}
	return out
}

// Counters reads and sums the per-CPU counters.
func (s *Store) Counters() (Counters, error) {
	var per []skbstoreCounters
	if err := s.coll.Maps["counter_map"].Lookup(uint32(0), &per); err != nil {
		return Counters{}, fmt.Errorf("read counters: %w", err)
	}
	var c Counters
	for i := range per {
		c.add(&per[i])
	}
	loaded := make(map[string]bool, len(s.progs))
	for name := range s.progs {
		loaded[name] = true
	}
	c.Unavailable = unavailableCounters(loaded, s.opts.observes(), s.opts.Strategy == StrategyComplete, s.kernel.HasDropReasons)
	return c, nil
}

// Value is the data stored for one skb.
type Value struct {
	// Payload is the user payload; for every generation it must equal
	// ExpectedPayload(RootID).
	Payload [PayloadLen]byte `json:"-"`
	// AllocTime is the root skb's allocation time (CLOCK_MONOTONIC).
	AllocTime time.Duration `json:"alloc_ns"`
	// CreatedTime is when this entry was written (CLOCK_MONOTONIC).
	CreatedTime time.Duration `json:"created_ns"`
	// RootID identifies the root allocation the entry descends from.
	RootID uint64 `json:"root_id"`
	// Parent is the address of the skb this one was cloned or copied
	// from, 0 for allocations.
	Parent uint64 `json:"parent"`
	// Generation is 0 for allocations and the parent's + 1 for clones.
	Generation uint32 `json:"generation"`
	// CreatedBy is the path that created the entry.
	CreatedBy CreatePath `json:"created_by"`
	// TGID is the process that allocated the root skb.
	TGID uint32 `json:"tgid"`
	// FreedBy is, in StrategyTracepoints with observers, the path on which
	// the skb was released while the entry stayed; FreeNone if not seen.
	FreedBy FreePath `json:"freed_by"`
	// FreedTime is when FreedBy saw it (CLOCK_MONOTONIC).
	FreedTime time.Duration `json:"freed_ns"`
}

// PayloadOK reports whether the payload is intact.
func (v Value) PayloadOK() bool { return v.Payload == ExpectedPayload(v.RootID) }

// ExpectedPayload returns the payload the BPF programs write for root id.
func ExpectedPayload(rootID uint64) [PayloadLen]byte {
	var p [PayloadLen]byte
	for i := range p {
		p[i] = byte(rootID>>((i&7)*8)) ^ byte(0x5b+i*29)
	}
	return p
}

// Entry is one key/value pair of the storage map.
type Entry struct {
	// Key is the skb's address.
	Key uint64 `json:"key"`
	// Value is what is stored for it.
	Value Value `json:"value"`
}

// Entries returns a snapshot of the storage map. Entries change while the
// programs are attached, so a concurrent snapshot is not atomic.
func (s *Store) Entries() ([]Entry, error) {
	var (
		k   uint64
		raw skbstoreSkbValue
		out []Entry
	)
	it := s.coll.Maps["skb_store"].Iterate()
	for it.Next(&k, &raw) {
		out = append(out, Entry{Key: k, Value: Value{
			Payload:     raw.Payload,
			AllocTime:   time.Duration(raw.AllocNs),
			CreatedTime: time.Duration(raw.CreatedNs),
			RootID:      raw.RootId,
			Parent:      raw.Parent,
			Generation:  raw.Generation,
			CreatedBy:   CreatePath(raw.CreatePath),
			TGID:        raw.Tgid,
			FreedBy:     FreePath(raw.DeadPath),
			FreedTime:   time.Duration(raw.DeadNs),
		}})
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("iterate skb_store: %w", err)
	}
	return out, nil
}

// DropReasons returns how many tracked skbs kfree_skb deleted per drop
// reason, by the running kernel's names (e.g. "NO_SOCKET"). It returns
// ErrUnavailable on kernels whose tracepoint has no reason (before 5.17).
func (s *Store) DropReasons() (map[string]uint64, error) {
	if !s.kernel.HasDropReasons {
		return nil, fmt.Errorf("drop reasons: kfree_skb tracepoint has %d arguments: %w", s.kernel.KfreeSkbArgs, ErrUnavailable)
	}
	var (
		k   uint32
		n   uint64
		out = map[string]uint64{}
	)
	it := s.coll.Maps["drop_reasons"].Iterate()
	for it.Next(&k, &n) {
		name, ok := s.reasons[k]
		if !ok {
			name = fmt.Sprintf("reason_%d", k)
		}
		out[name] += n
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate drop_reasons: %w", err)
	}
	return out, nil
}

// KnowsDropReason reports whether the running kernel's enum
// skb_drop_reason has a value called name (without the SKB_DROP_REASON_
// prefix), e.g. "NO_SOCKET". Always false before 5.17.
func (s *Store) KnowsDropReason(name string) bool {
	for _, n := range s.reasons {
		if n == name {
			return true
		}
	}
	return false
}

// ProgramStats are a program's run statistics.
type ProgramStats struct {
	// Runs is how often the program ran.
	Runs uint64 `json:"runs"`
	// Runtime is the total time spent in it.
	Runtime time.Duration `json:"runtime_ns"`
	// Missed counts runs the kernel skipped (recursion); 0 where the
	// kernel does not report it.
	Missed uint64 `json:"missed"`
}

// PerRun is the average time per run, 0 if it never ran.
func (p ProgramStats) PerRun() time.Duration {
	if p.Runs == 0 {
		return 0
	}
	return p.Runtime / time.Duration(p.Runs)
}

// EnableRunStats turns on the kernel's run time accounting for BPF
// programs (BPF_ENABLE_STATS) until the returned Closer is closed. Without
// it ProgramStats reports runs and runtime as 0.
func EnableRunStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF run stats: %w", err)
	}
	return c, nil
}

// ProgramStats returns every loaded program's run statistics.
func (s *Store) ProgramStats() (map[string]ProgramStats, error) {
	out := make(map[string]ProgramStats, len(s.progs))
	for name, p := range s.progs {
		st, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("stats of %s: %w", name, err)
		}
		out[name] = ProgramStats{Runs: st.RunCount, Runtime: st.Runtime, Missed: st.RecursionMisses}
	}
	return out, nil
}
