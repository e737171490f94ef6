package bpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// Reader is a layer of the stack that reads a packet's tag (tagflow.c).
type Reader int

// The readers, in tagflow.c's order.
const (
	ReaderCgroup   Reader = iota // cgroup_skb/ingress: the socket layer, before the socket filter
	ReaderUDPQueue               // fentry __udp_enqueue_schedule_skb: the UDP receive queue
	ReaderTCPRcv                 // fentry tcp_rcv_established: TCP's established receive path
	ReaderTCEgress               // tc egress (clsact) on the next hop, after forwarding
	ReaderTap                    // fentry packet_rcv: an AF_PACKET tap
	ReaderXDPMeta                // tc ingress reading the tag XDP put in data_meta (a baseline)
	NumReaders
)

var readerNames = [NumReaders]string{"cgroup_skb ingress", "udp receive queue", "tcp_rcv_established", "tc egress", "af_packet tap", "xdp data_meta at tc"}

// String names the reader.
func (r Reader) String() string {
	if r < 0 || r >= NumReaders {
		return fmt.Sprintf("reader(%d)", int(r))
	}
	return readerNames[r]
}

// MarshalText names the reader in JSON.
func (r Reader) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// ReaderCounts is what one reader found, summed over CPUs.
type ReaderCounts struct {
	Seen      uint64 `json:"seen"`       // packets of the flow it saw
	Delivered uint64 `json:"delivered"`  // the map held this packet's tag
	Lost      uint64 `json:"lost"`       // the map held nothing for the skb
	Wrong     uint64 `json:"wrong"`      // the map held another packet's tag
	LostClone uint64 `json:"lost_clone"` // lost: the skb is a clone of a tagged skb
	LostFrag  uint64 `json:"lost_frag"`  // lost: the skb was a non-first fragment at ingress
	MarkOK    uint64 `json:"mark_ok"`    // skb->mark still carried the tag (the baseline)
}

// WriterCounts is what the tc ingress writer and the free hooks did.
type WriterCounts struct {
	Written  uint64 `json:"written"`
	Replaced uint64 `json:"replaced"` // an entry was already there: a free no hook saw
	Failed   uint64 `json:"failed"`
	Frags    uint64 `json:"frags"` // non-first fragments (no tag)
	Deleted  uint64 `json:"deleted"`
	Clones   uint64 `json:"clones"` // clones of tagged skbs
}

// TagFlowCounts is a snapshot of all counters.
type TagFlowCounts struct {
	Writer  WriterCounts
	Readers [NumReaders]ReaderCounts
}

// TagFlowOptions configure LoadTagFlow.
type TagFlowOptions struct {
	// Port is the flow's destination port: only its packets are tagged
	// and read.
	Port uint16
	// NoMark leaves skb->mark alone (by default the writer also puts the
	// tag there, the baseline to compare with).
	NoMark bool
	// MarkOnly carries the tag in skb->mark alone, without the map: what
	// the baseline costs.
	MarkOnly bool
}

// tracedReaders are the fentry readers, each optional: a kernel without
// the function (or a module not loaded) skips it with the reason.
var tracedReaders = []struct {
	prog, target string
	reader       Reader
}{
	{"read_udp_queue", "__udp_enqueue_schedule_skb", ReaderUDPQueue},
	{"read_tcp_rcv", "tcp_rcv_established", ReaderTCPRcv},
	{"read_tap", "packet_rcv", ReaderTap},
}

// TagFlow holds the loaded tag flow programs and their maps. The tc and
// cgroup programs are attached by the caller (IngressWriter, EgressReader,
// AttachCgroup), the tracing ones by AttachTracing.
type TagFlow struct {
	coll    *ebpf.Collection
	progs   map[string]*ebpf.Program
	logs    map[string]string
	skipped []SkippedHook
	links   []link.Link
}

// LoadTagFlow loads tagflow.c's programs. A rejected program fails the
// load with a *LoadError carrying every verifier log; a tracing reader
// whose function the kernel lacks is skipped (Skipped says why).
func LoadTagFlow(opts TagFlowOptions) (*TagFlow, error) {
	if opts.Port == 0 {
		return nil, errors.New("tag flow: no port")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise RLIMIT_MEMLOCK: %w", err)
	}
	spec, err := loadTagflow()
	if err != nil {
		return nil, err
	}
	port := opts.Port>>8 | opts.Port<<8 // network order, as the program compares it
	mark := uint8(1)
	if opts.NoMark {
		mark = 0
	}
	if err := spec.Variables["flow_port_be"].Set(port); err != nil {
		return nil, fmt.Errorf("set flow_port_be: %w", err)
	}
	if err := spec.Variables["write_mark"].Set(mark); err != nil {
		return nil, fmt.Errorf("set write_mark: %w", err)
	}
	useMap := uint8(1)
	if opts.MarkOnly {
		useMap = 0
	}
	if err := spec.Variables["use_map"].Set(useMap); err != nil {
		return nil, fmt.Errorf("set use_map: %w", err)
	}
	kspec, err := kernelSpec()
	if err != nil {
		return nil, fmt.Errorf("load kernel BTF: %w", err)
	}
	t := &TagFlow{progs: map[string]*ebpf.Program{}, logs: map[string]string{}}
	for _, r := range tracedReaders {
		// Functions of modules (packet_rcv, when af_packet is one) are
		// found by the loader in the module's BTF once it is loaded.
		if !hasFunc(kspec, r.target) && !moduleLoadedFor(r.target) {
			t.skipped = append(t.skipped, SkippedHook{Program: r.prog, Hook: r.target, Reason: fmt.Sprintf("fentry %s: %v", r.target, errMissing)})
			delete(spec.Programs, r.prog)
		}
	}
	cache := kernelBTF
	mapsOnly := spec.Copy()
	mapsOnly.Programs = nil
	if t.coll, err = ebpf.NewCollectionWithOptions(mapsOnly, ebpf.CollectionOptions{Cache: cache}); err != nil {
		return nil, fmt.Errorf("create maps: %w", err)
	}
	loadErr := &LoadError{Logs: t.logs}
	optional := map[string]bool{}
	for _, r := range tracedReaders {
		optional[r.prog] = true
	}
	for name := range spec.Programs {
		prog, log, err := loadProgram(spec, name, t.coll.Maps, cache)
		t.logs[name] = log
		if err != nil {
			if optional[name] && (strings.Contains(log, "cannot be found") || strings.Contains(err.Error(), "not found")) {
				t.skipped = append(t.skipped, SkippedHook{Program: name, Hook: spec.Programs[name].AttachTo, Reason: err.Error()})
				continue
			}
			loadErr.Failed = append(loadErr.Failed, &ProgramError{Program: name, Hook: spec.Programs[name].AttachTo, Log: log, Err: err})
			continue
		}
		t.progs[name] = prog
	}
	loadErr.Skipped = t.skipped
	if len(loadErr.Failed) > 0 {
		t.Close()
		return nil, loadErr
	}
	return t, nil
}

// moduleLoadedFor reports whether the function may live in a loaded
// module: packet_rcv is af_packet's.
func moduleLoadedFor(fn string) bool {
	if fn != "packet_rcv" {
		return false
	}
	_, err := btf.LoadKernelModuleSpec("af_packet")
	return err == nil
}

// IngressWriter is the tc program that writes tags; attach it to the
// receiving device's clsact ingress.
func (t *TagFlow) IngressWriter() *ebpf.Program { return t.progs["tag_ingress"] }

// EgressReader is the tc program that reads tags after forwarding; attach
// it to the outgoing device's clsact egress.
func (t *TagFlow) EgressReader() *ebpf.Program { return t.progs["read_tc_egress"] }

// XDPMeta is an XDP program that puts each UDP packet's tag of the flow in
// the packet's metadata (data_meta), for MetaReader to read at tc ingress.
func (t *TagFlow) XDPMeta() *ebpf.Program { return t.progs["xdp_meta"] }

// MetaReader is the tc ingress program that reads data_meta.
func (t *TagFlow) MetaReader() *ebpf.Program { return t.progs["read_tc_meta"] }

// XDPPass is an XDP program that passes every packet: on a veth it makes
// the device receive in NAPI, where GRO merges segments.
func (t *TagFlow) XDPPass() *ebpf.Program { return t.progs["xdp_pass"] }

// AttachCgroup attaches the socket-layer reader to a cgroup v2 directory.
func (t *TagFlow) AttachCgroup(path string) error {
	l, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: ebpf.AttachCGroupInetIngress, Program: t.progs["read_cgroup"]})
	if err != nil {
		return fmt.Errorf("attach cgroup_skb/ingress to %s: %w", path, err)
	}
	t.links = append(t.links, l)
	return nil
}

// AttachTracing attaches the free hooks, the clone watcher and the traced
// readers that loaded.
func (t *TagFlow) AttachTracing() error {
	return t.attach("free_consume", "free_kfree", "follow_clone", "read_udp_queue", "read_tcp_rcv", "read_tap")
}

// AttachFreeHooks attaches only the hooks that delete entries at free: the
// pattern's own cost, without the observers.
func (t *TagFlow) AttachFreeHooks() error { return t.attach("free_consume", "free_kfree") }

func (t *TagFlow) attach(names ...string) error {
	for _, name := range names {
		p := t.progs[name]
		if p == nil {
			continue // a skipped reader
		}
		var l link.Link
		var err error
		if strings.HasPrefix(name, "free_") { // tp_btf
			l, err = link.AttachTracing(link.TracingOptions{Program: p})
		} else { // fentry, fexit
			l, err = attachTrampoline(p)
		}
		if err != nil {
			return fmt.Errorf("attach %s: %w", name, err)
		}
		t.links = append(t.links, l)
	}
	return nil
}

// Loaded reports whether a reader's program is loaded.
func (t *TagFlow) Loaded(r Reader) bool {
	for _, tr := range tracedReaders {
		if tr.reader == r {
			return t.progs[tr.prog] != nil
		}
	}
	return r >= 0 && r < NumReaders
}

// Skipped lists the readers left out, with why.
func (t *TagFlow) Skipped() []SkippedHook { return append([]SkippedHook(nil), t.skipped...) }

// VerifierLogs returns each program's verifier log (statistics).
func (t *TagFlow) VerifierLogs() map[string]string {
	out := make(map[string]string, len(t.logs))
	for k, v := range t.logs {
		out[k] = v
	}
	return out
}

// Counts sums the per-CPU counters.
func (t *TagFlow) Counts() (TagFlowCounts, error) {
	var c TagFlowCounts
	var ws []tagflowWriterStats
	if err := t.coll.Maps["writer_counts"].Lookup(uint32(0), &ws); err != nil {
		return c, fmt.Errorf("read writer counters: %w", err)
	}
	for _, w := range ws {
		c.Writer.Written += w.Written
		c.Writer.Replaced += w.Replaced
		c.Writer.Failed += w.Failed
		c.Writer.Frags += w.Frags
		c.Writer.Deleted += w.Deleted
		c.Writer.Clones += w.Clones
	}
	for r := Reader(0); r < NumReaders; r++ {
		var rs []tagflowReaderStats
		if err := t.coll.Maps["reader_counts"].Lookup(uint32(r), &rs); err != nil {
			return c, fmt.Errorf("read %s counters: %w", r, err)
		}
		for _, s := range rs {
			x := &c.Readers[r]
			x.Seen += s.Seen
			x.Delivered += s.Delivered
			x.Lost += s.Lost
			x.Wrong += s.Wrong
			x.LostClone += s.LostClone
			x.LostFrag += s.LostFrag
			x.MarkOK += s.MarkOk
		}
	}
	return c, nil
}

// Entries is the number of tags in the map: tags of skbs no free hook saw
// once the stack has settled.
func (t *TagFlow) Entries() (int, error) {
	n := 0
	var k uint64
	var v tagflowTagValue
	it := t.coll.Maps["tags"].Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}

// Close detaches and unloads everything.
func (t *TagFlow) Close() error {
	var errs []error
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	t.links = nil
	for _, p := range t.progs {
		errs = append(errs, p.Close())
	}
	if t.coll != nil {
		t.coll.Close()
	}
	return errors.Join(errs...)
}
