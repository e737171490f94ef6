package skbstore

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/skbstore/skbstore/bpf"
	"github.com/skbstore/skbstore/suites/internal/artifacts"
	"github.com/skbstore/skbstore/suites/internal/testenv"
)

// check is one assertion of a run. Must checks fail the test; the others
// are findings, recorded but never failing.
type check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Must   bool   `json:"must"`
	Detail string `json:"detail,omitempty"`
}

// leakReport describes the entries left in the map after the traffic and
// its sockets are gone.
type leakReport struct {
	Count        int            `json:"count"`
	ByCreatedBy  map[string]int `json:"by_created_by"`
	ByFreedBy    map[string]int `json:"by_freed_by"`
	ByGeneration map[string]int `json:"by_generation"`
	Samples      []bpf.Entry    `json:"samples,omitempty"`
}

// runResult is what one (suite, case, strategy, variant) run measured.
type runResult struct {
	Suite       string            `json:"suite"`
	Case        string            `json:"case,omitempty"`
	Kernel      string            `json:"kernel"`
	KernelInfo  *bpf.KernelInfo   `json:"kernel_info,omitempty"`
	Strategy    bpf.Strategy      `json:"strategy"`
	Variant     bpf.MapVariant    `json:"variant"`
	MaxEntries  uint32            `json:"max_entries"`
	ObserveLeak bool              `json:"observe_leaks"`
	Verdict     string            `json:"verdict"`
	Reason      string            `json:"reason,omitempty"`
	Programs    []bpf.ProgramInfo `json:"programs,omitempty"`
	Skipped     []bpf.SkippedHook `json:"skipped_hooks,omitempty"`
	Traffic     map[string]any    `json:"traffic,omitempty"`
	Counters    *bpf.Counters     `json:"counters,omitempty"`
	DropReasons any               `json:"drop_reasons,omitempty"`
	Leaks       *leakReport       `json:"leaks,omitempty"`
	Stale       map[string]uint64 `json:"stale,omitempty"`
	Evicted     *int64            `json:"lru_evicted,omitempty"`
	Checks      []check           `json:"checks"`
	DurationMS  int64             `json:"duration_ms"`
	// PhasesMS is where the run's time went: load, wait_detach (for
	// the previous store to be gone), attach or reset (shared store),
	// traffic, settle, detach (own store), check.
	PhasesMS map[string]int64 `json:"phases_ms,omitempty"`
	Extra    map[string]any   `json:"extra,omitempty"`
}

// phase records the time since *mark under name and moves the mark.
func (r *runResult) phase(name string, mark *time.Time) {
	if r.PhasesMS == nil {
		r.PhasesMS = map[string]int64{}
	}
	now := time.Now()
	r.PhasesMS[name] += now.Sub(*mark).Milliseconds()
	*mark = now
}

// suiteLog collects a suite's runs and writes skbstore/<suite>.json when
// the top-level test ends, whatever the outcome.
type suiteLog struct {
	name string
	mu   sync.Mutex
	runs []*runResult
}

func newSuite(t *testing.T, name string) *suiteLog {
	testenv.RequireGuest(t)
	s := &suiteLog{name: name}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		artifacts.SaveJSON(t, "skbstore/"+name+".json", map[string]any{
			"suite":  name,
			"kernel": testenv.KernelRelease(),
			"runs":   s.runs,
		})
		// The flat figures vmtest's reports put in the kernel matrix.
		artifacts.SaveJSON(t, "metrics/"+name+".json", s.metrics())
	})
	return s
}

// metrics returns leaks and stale entries per case, strategy and map
// variant, for the matrix in vmtest's reports (metrics/<suite>.json).
func (s *suiteLog) metrics() map[string]any {
	m := map[string]any{}
	for _, r := range s.runs {
		key := r.Case
		if key == "" {
			key = r.Suite
		}
		key = fmt.Sprintf("%s.%v-%v", key, r.Strategy, r.Variant)
		if r.Leaks != nil {
			m[key+".leaks"] = r.Leaks.Count
		}
		if total, ok := r.Stale["total"]; ok {
			m[key+".stale"] = total
		}
	}
	// A case's fixed cost: its time other than its traffic (loading or
	// resetting, attaching, settling, checking), median over the runs;
	// vmtest bench -workload sets it against the floor.
	var fixed []int64
	for _, r := range s.runs {
		if r.Verdict == "pass" {
			fixed = append(fixed, r.DurationMS-r.PhasesMS["traffic"])
		}
	}
	if len(fixed) > 0 {
		slices.Sort(fixed)
		m["case_fixed_ms"] = fixed[len(fixed)/2]
	}
	return m
}

func (s *suiteLog) add(r *runResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runs = append(s.runs, r)
}

// run is the state of one subtest.
type run struct {
	t       *testing.T
	store   *bpf.Store
	res     *runResult
	mark    time.Time // start of the current phase
	shared  bool      // the store serves the configuration's next case
	loadErr error     // why the store could not be loaded or attached
}

// must records a check that fails the test when !ok.
func (r *run) must(name string, ok bool, format string, args ...any) {
	r.t.Helper()
	d := fmt.Sprintf(format, args...)
	r.res.Checks = append(r.res.Checks, check{Name: name, OK: ok, Must: true, Detail: d})
	if !ok {
		r.t.Errorf("%s: %s", name, d)
	}
}

// finding records a measured property that does not fail the test.
func (r *run) finding(name string, ok bool, format string, args ...any) {
	r.t.Helper()
	d := fmt.Sprintf(format, args...)
	r.res.Checks = append(r.res.Checks, check{Name: name, OK: ok, Detail: d})
	r.t.Logf("finding %s ok=%v: %s", name, ok, d)
}

// traffic records a traffic figure.
func (r *run) traffic(k string, v any) {
	if r.res.Traffic == nil {
		r.res.Traffic = map[string]any{}
	}
	r.res.Traffic[k] = v
}

// extra records suite-specific data.
func (r *run) extra(k string, v any) {
	if r.res.Extra == nil {
		r.res.Extra = map[string]any{}
	}
	r.res.Extra[k] = v
}

// counters reads the counters, failing the test on error.
func (r *run) counters() bpf.Counters {
	r.t.Helper()
	c, err := r.store.Counters()
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// dropReasons reads the drop reasons, nil if the kernel has none.
func (r *run) dropReasons() map[string]uint64 {
	r.t.Helper()
	m, err := r.store.DropReasons()
	if errors.Is(err, bpf.ErrUnavailable) {
		return nil
	}
	if err != nil {
		r.t.Fatal(err)
	}
	return m
}

// config is one load configuration.
type config struct {
	strategy bpf.Strategy
	variant  bpf.MapVariant
}

func (c config) String() string { return string(c.strategy) + "-" + string(c.variant) }

// allConfigs is every strategy with every map variant.
func allConfigs() []config {
	var out []config
	for _, s := range bpf.Strategies {
		for _, v := range bpf.MapVariants {
			out = append(out, config{s, v})
		}
	}
	return out
}

// defaultOptions are the functional suites' options for c: track this
// process's skbs, observe leaks, verify payloads.
func defaultOptions(c config) bpf.Options {
	return bpf.Options{
		Strategy:      c.strategy,
		MapVariant:    c.variant,
		Filter:        bpf.Filter{TGID: uint32(os.Getpid())},
		ObserveLeaks:  true,
		VerifyPayload: true,
	}
}

// shared is the store of one configuration in TestLifecycle: loaded and
// attached once and used by the configuration's cases one after another,
// reset in between (detaching a store's 13 trampoline programs waits for a
// grace period each, about 1.4 s a store on 6.1 under emulation). Only
// one store is attached at any time: with six attached at once (a pool
// that was tried), kfree_skb once deleted 31 of 100 dropped datagrams'
// entries in one of them, which never happens with one store.
type shared struct {
	opts  bpf.Options
	store *bpf.Store
	err   error // load or attach error, reported by every case
}

// newShared returns the shared store of opts, closed when t ends.
func newShared(t *testing.T, opts bpf.Options) *shared {
	sh := &shared{opts: opts}
	t.Cleanup(sh.close)
	return sh
}

func (sh *shared) close() {
	if sh.store != nil {
		closeInBackground(sh.store)
		sh.store = nil
	}
}

// detacher closes stores in the background. Detaching a store's trampoline
// programs waits for a grace period each (1.4 s a store on 6.1 under
// emulation, serialized in the kernel): time in which the next store is
// loaded and verified. It is attached only once the previous one is gone
// (waitDetached), so that no two stores are ever attached at once.
var detacher struct {
	mu   sync.Mutex
	done chan struct{} // closed when the last store handed over is closed
}

// closeInBackground detaches and closes st after the stores handed over
// before it.
func closeInBackground(st *bpf.Store) {
	detacher.mu.Lock()
	prev := detacher.done
	done := make(chan struct{})
	detacher.done = done
	detacher.mu.Unlock()
	go func() {
		if prev != nil {
			<-prev
		}
		st.Close()
		close(done)
	}()
}

// waitDetached waits until every store handed to closeInBackground is
// closed.
func waitDetached() {
	detacher.mu.Lock()
	done := detacher.done
	detacher.mu.Unlock()
	if done != nil {
		<-done
	}
}

// held is the trampoline hold of the functional tests (bpf.TrampolineHold):
// with it, detaching a store on 6.1 or 6.12 takes 0.15 s instead of 1.5 s.
// TestLifecycle and TestMapFull take it; TestCost, whose figures must be of
// a store alone, releases it first.
var held struct {
	mu  sync.Mutex
	h   *bpf.TrampolineHold
	all bool // h holds every function a store may use
}

// holdTrampolines holds every function a store may use, if that is not in
// place yet; a partial hold (TestCost's) is let go once the full one is in.
func holdTrampolines(t *testing.T) {
	held.mu.Lock()
	defer held.mu.Unlock()
	if held.all || bpf.Trampolines() != nil {
		return
	}
	targets, err := bpf.TrampolineTargets()
	if err != nil {
		t.Logf("trampolines not held: %v", err)
		return
	}
	h := bpf.HoldTrampolines(targets)
	t.Logf("trampolines held on %v", h.Held())
	for fn, err := range h.Failed {
		t.Logf("trampoline on %s not held (stores detach from it as without a hold): %v", fn, err)
	}
	if held.h != nil {
		held.h.Close()
	}
	held.h, held.all = h, true
}

// holdOnly holds exactly the functions of store (TestCost's): its stores
// take turns on the same trampolines without destroying them, yet each is
// measured alone. A store is attached with the last one's hold in place,
// which is let go (unhold) before the measurement; its own hold is taken
// after it, before the store is detached.
func holdOnly(store *bpf.Store) {
	held.mu.Lock()
	defer held.mu.Unlock()
	if bpf.Trampolines() != nil {
		return
	}
	h := bpf.HoldTrampolines(store.TrampolineTargets())
	if held.h != nil {
		held.h.Close()
	}
	held.h, held.all = h, false
}

// unhold lets go of the hold, if any.
func unhold() {
	held.mu.Lock()
	defer held.mu.Unlock()
	if held.h != nil {
		held.h.Close()
		held.h, held.all = nil, false
	}
}

// releaseTrampolines releases the hold, if any, once the stores handed to
// closeInBackground are gone.
func releaseTrampolines() {
	waitDetached()
	unhold()
}

func TestMain(m *testing.M) {
	code := m.Run()
	releaseTrampolines()
	os.Exit(code)
}

// runStore loads and attaches the programs with opts for this case alone,
// runs body with them and then checks and records the map: leaks, stale
// entries, consistency of counters and entries. caseName distinguishes
// runs within a suite.
func (s *suiteLog) runStore(t *testing.T, caseName string, opts bpf.Options, body func(r *run)) {
	t.Helper()
	s.runCase(t, caseName, opts, nil, body)
}

// runShared is runStore with the shared store of a configuration: loaded
// by the first case, reset for the others, reloaded after a failed case
// (whose state is not trusted for the next).
func (s *suiteLog) runShared(t *testing.T, caseName string, sh *shared, body func(r *run)) {
	t.Helper()
	s.runCase(t, caseName, sh.opts, sh, body)
}

func (s *suiteLog) runCase(t *testing.T, caseName string, opts bpf.Options, sh *shared, body func(r *run)) {
	t.Helper()
	start := time.Now()
	ki, _ := bpf.Kernel()
	res := &runResult{
		Suite: s.name, Case: caseName, Kernel: testenv.KernelRelease(), KernelInfo: &ki,
		Strategy: opts.Strategy, Variant: opts.MapVariant, MaxEntries: opts.MaxEntries,
		ObserveLeak: opts.ObserveLeaks || opts.Strategy == bpf.StrategyComplete,
		Verdict:     "fail",
	}
	if res.MaxEntries == 0 {
		res.MaxEntries = bpf.DefaultMaxEntries
	}
	s.add(res)
	r := &run{t: t, res: res, mark: start}
	defer func() {
		res.DurationMS = time.Since(start).Milliseconds()
		t.Logf("phases (ms): %v", res.PhasesMS)
		switch {
		case t.Skipped():
			res.Verdict = "skip"
		case t.Failed():
			res.Verdict = "fail"
			if res.Reason == "" {
				res.Reason = failedChecks(res.Checks)
			}
		default:
			res.Verdict = "pass"
		}
	}()

	if sh != nil {
		defer func() {
			if r.loadErr != nil && sh.err == nil {
				sh.err = r.loadErr // the configuration's later cases fail alike
			}
			if t.Failed() {
				sh.close()
			}
		}()
	}
	var store *bpf.Store
	switch {
	case sh == nil:
		store = r.load(opts)
		defer closeInBackground(store)
	case sh.err != nil:
		// An earlier case of this configuration failed to load: so
		// does this one, with the same reason.
		r.loadFailed(opts, sh.err)
	case sh.store != nil:
		store = sh.store
		if err := store.Reset(); err != nil {
			sh.close()
			t.Fatalf("reset the shared store: %v", err)
		}
		res.Skipped = store.Skipped()
		res.Programs = store.Programs()
		res.phase("reset", &r.mark)
	default:
		sh.store = r.load(opts)
		store = sh.store
	}
	r.store = store

	body(r)
	res.phase("traffic", &r.mark)
	if t.Failed() || t.Skipped() {
		// Still record what the map holds.
		r.finish(false)
		return
	}
	r.finish(true)
}

// load loads and attaches a store with opts, saving the verifier logs; a
// failure fails the test (skips it where the kernel has no trampolines).
func (r *run) load(opts bpf.Options) *bpf.Store {
	t, res := r.t, r.res
	t.Helper()
	store, err := bpf.Load(opts)
	if err != nil {
		r.loadFailed(opts, err)
	}
	res.phase("load", &r.mark)
	for prog, log := range store.VerifierLogs() {
		artifacts.Save(t, verifierDir(opts)+"/"+prog+".log", []byte(log))
	}
	res.Skipped = store.Skipped()
	for _, sk := range res.Skipped {
		t.Logf("hook skipped: %s: %s", sk.Program, sk.Reason)
	}
	waitDetached()
	res.phase("wait_detach", &r.mark)
	if err := store.Attach(); err != nil {
		store.Close()
		r.loadFailed(opts, fmt.Errorf("attach: %w", err))
	}
	res.Programs = store.Programs()
	res.phase("attach", &r.mark)
	return store
}

func verifierDir(opts bpf.Options) string {
	return "verifier/" + string(opts.Strategy) + "-" + string(opts.MapVariant)
}

// loadFailed ends the test for a load or attach error: a skip where the
// kernel has no BPF trampolines, else a failure with every rejected
// program's verifier log (also kept as artifacts).
func (r *run) loadFailed(opts bpf.Options, err error) {
	t, res := r.t, r.res
	t.Helper()
	r.loadErr = err
	res.Reason = err.Error()
	if errors.Is(err, bpf.ErrNoTrampoline) {
		t.Skipf("load: %v", err)
	}
	var le *bpf.LoadError
	if errors.As(err, &le) {
		res.Skipped = le.Skipped
		for prog, log := range le.Logs {
			artifacts.Save(t, verifierDir(opts)+"/"+prog+".log", []byte(log))
		}
		var b strings.Builder
		for _, f := range le.Failed {
			fmt.Fprintf(&b, "\n--- %s (%s): %v\n%s", f.Program, f.Hook, f.Err, f.Log)
		}
		t.Fatalf("load: %v%s", err, b.String())
	}
	t.Fatalf("load: %v", err)
}

// finish waits for the stack to settle and checks the final state of the map
// against the counters.
func (r *run) finish(full bool) {
	t := r.t
	t.Helper()
	complete := r.store.Options().Strategy == bpf.StrategyComplete

	// Let deferred frees happen with the programs still attached (a
	// loopback datagram from every CPU flushes them), then wait until
	// the map is empty ("complete") or the same over 100 ms.
	deadline := time.Now().Add(5 * time.Second)
	prev := -1
	for {
		if err := testenv.Settle(0); err != nil {
			t.Logf("settle: %v", err)
		}
		es, err := r.store.Entries()
		if err != nil {
			t.Fatal(err)
		}
		if (complete && len(es) == 0) || (!complete && len(es) == prev) || time.Now().After(deadline) {
			break
		}
		prev = len(es)
		time.Sleep(100 * time.Millisecond)
	}
	r.res.phase("settle", &r.mark)
	defer r.res.phase("check", &r.mark)
	res := r.res
	c, entries := r.snapshot()
	res.Counters = &c
	if dr := r.dropReasons(); dr != nil {
		res.DropReasons = dr
	} else {
		res.DropReasons = "unavailable: kfree_skb tracepoint has no reason argument on this kernel"
	}
	res.Stale = map[string]uint64{"total": c.TotalStale()}
	for i := 1; i < bpf.NumCreatePaths; i++ {
		if c.Stale[i] > 0 {
			res.Stale[bpf.CreatePath(i).String()] = c.Stale[i]
		}
	}
	if c.IsAvailable("stale_after_leak") {
		res.Stale["after_observed_leak"] = c.StaleAfterLeak
	}
	res.Stale["filtered_alloc_hit_entry"] = c.StaleFiltered

	lr := &leakReport{Count: len(entries), ByCreatedBy: map[string]int{}, ByFreedBy: map[string]int{}, ByGeneration: map[string]int{}}
	badPayload := 0
	for _, e := range entries {
		lr.ByCreatedBy[e.Value.CreatedBy.String()]++
		lr.ByFreedBy[e.Value.FreedBy.String()]++
		lr.ByGeneration[fmt.Sprint(e.Value.Generation)]++
		if !e.Value.PayloadOK() {
			badPayload++
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Value.CreatedTime < entries[j].Value.CreatedTime })
	if len(entries) > 20 {
		lr.Samples = entries[:20]
	} else {
		lr.Samples = entries
	}
	res.Leaks = lr
	if !full {
		return
	}

	// What must hold with either strategy.
	r.must("payload_intact_at_delete", c.PayloadBad == 0, "%d deleted entries had a corrupted payload", c.PayloadBad)
	r.must("payload_intact_in_map", badPayload == 0, "%d entries left in the map have a corrupted payload", badPayload)
	r.must("no_update_errors", c.UpdateErrors == 0, "%d map updates failed for a reason other than a full map (last errno %d)", c.UpdateErrors, c.UpdateErrno)
	live := c.Live()
	if r.store.Options().MapVariant == bpf.MapLRU {
		ev := live - int64(len(entries))
		res.Evicted = &ev
		r.must("counts_consistent", ev >= 0, "LRU: inserted-deleted=%d, entries=%d: evicted %d must be >= 0", live, len(entries), ev)
	} else {
		r.must("counts_consistent", live == int64(len(entries)), "inserted %d - deleted %d = %d, but the map holds %d entries", c.Inserted(), c.TotalDeleted(), live, len(entries))
	}

	// Leaks and stale entries: a failure for "complete", the finding for
	// "tracepoints".
	leakMsg := fmt.Sprintf("%d entries left after traffic and sockets are gone (created by %v, freed-by observer %v, generation %v); leak_seen %v",
		len(entries), lr.ByCreatedBy, lr.ByFreedBy, lr.ByGeneration, leakSeen(c))
	staleMsg := fmt.Sprintf("stale %v", res.Stale)
	if complete {
		r.must("no_leaks", len(entries) == 0, "%s", leakMsg)
		r.must("no_stale", c.TotalStale() == 0, "%s", staleMsg)
	} else {
		r.finding("no_leaks", len(entries) == 0, "%s", leakMsg)
		r.finding("no_stale", c.TotalStale() == 0, "%s", staleMsg)
	}
	t.Logf("counters: %s", compact(c))
}

// snapshot reads the counters and the map's entries so that they agree.
// The programs are still attached (the store is detached in the
// background, while the next one loads): an skb of ours allocated or freed
// between the reads would make them disagree, so it reads again until the
// counters did not move meanwhile.
func (r *run) snapshot() (bpf.Counters, []bpf.Entry) {
	r.t.Helper()
	for i := 0; ; i++ {
		c := r.counters()
		entries, err := r.store.Entries()
		if err != nil {
			r.t.Fatal(err)
		}
		if again := r.counters(); reflect.DeepEqual(c, again) || i == 4 {
			if i > 0 {
				r.extra("snapshot_rereads", i)
			}
			return again, entries
		}
	}
}

func leakSeen(c bpf.Counters) map[string]uint64 {
	if !c.IsAvailable("leak_seen.__kfree_skb") && !c.IsAvailable("leak_seen.kfree_skbmem") {
		return nil
	}
	m := map[string]uint64{}
	for i := 1; i < bpf.NumFreePaths; i++ {
		if c.LeakSeen[i] > 0 {
			m[bpf.FreePath(i).String()] = c.LeakSeen[i]
		}
	}
	return m
}

// compact renders the non-zero counters on one line.
func compact(c bpf.Counters) string {
	f := c.Flat()
	keys := make([]string, 0, len(f))
	for k, v := range f {
		if v != 0 {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%d ", k, f[k])
	}
	return strings.TrimSpace(b.String())
}

func failedChecks(cs []check) string {
	var out []string
	for _, c := range cs {
		if c.Must && !c.OK {
			out = append(out, c.Name+": "+c.Detail)
		}
	}
	return strings.Join(out, "; ")
}

// forEachConfig runs fn as a subtest per strategy and map variant.
func forEachConfig(t *testing.T, fn func(t *testing.T, c config)) {
	for _, c := range allConfigs() {
		t.Run(c.String(), func(t *testing.T) { fn(t, c) })
	}
}
