package skbstore

import (
	"net"
	"time"

	"github.com/skbstore/skbstore/bpf"
)

// clone opens an AF_PACKET socket on lo, which makes the stack clone
// every skb to deliver it. With the UDP receiver and the packet socket both
// holding their skbs, each clone in the map must carry the payload and
// root of an original still in the map, one generation down from its
// parent; after both sockets are read and closed, both must be gone.
func clone(r *run) {
	t := r.t
	const n = 64
	ps, err := newPacketSocket("lo", 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	p, err := newUDPPair("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.rx.SetReadBuffer(8 << 20); err != nil {
		t.Fatal(err)
	}
	dport := p.rx.LocalAddr().(*net.UDPAddr).Port
	sent, err := send(p.tx, n, 200)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)

	// Originals wait in the UDP socket, clones in the packet socket.
	entries, err := r.store.Entries()
	if err != nil {
		t.Fatal(err)
	}
	byKey := map[uint64]bpf.Value{}
	roots := map[uint64]bpf.Value{}
	var clones []bpf.Entry
	for _, e := range entries {
		byKey[e.Key] = e.Value
		switch {
		case e.Value.Generation == 0:
			roots[e.Value.RootID] = e.Value
		case e.Value.CreatedBy == bpf.CreateClone:
			clones = append(clones, e)
		}
	}
	frames, ours := ps.drainUDPTo(dport)
	pkts, drops, _ := ps.dropStats()
	got := drain(p.rx, sent, 300*time.Millisecond)
	r.traffic("sent", sent)
	r.traffic("received_udp", got)
	r.traffic("packet_socket_frames", frames)
	r.traffic("packet_socket_ours", ours)
	r.traffic("packet_socket_drops", drops)
	r.traffic("packet_socket_packets", pkts)
	r.must("udp_received", got == sent, "UDP receiver read %d of %d", got, sent)
	r.must("packet_socket_saw_traffic", ours >= sent, "packet socket queued %d frames of ours for %d datagrams (drops %d)", ours, sent, drops)

	gens := map[uint32]int{}
	withRoot, parentPresent, genOK, payloadOK, rootPayloadEq := 0, 0, 0, 0, 0
	for _, cl := range clones {
		v := cl.Value
		gens[v.Generation]++
		if v.PayloadOK() {
			payloadOK++
		}
		if root, ok := roots[v.RootID]; ok {
			withRoot++
			if root.Payload == v.Payload && root.AllocTime == v.AllocTime {
				rootPayloadEq++
			}
		}
		if par, ok := byKey[v.Parent]; ok && v.Parent != 0 && v.Parent != cl.Key {
			parentPresent++
			if v.Generation == par.Generation+1 && v.RootID == par.RootID {
				genOK++
			}
		}
	}
	r.extra("clones_in_map", len(clones))
	r.extra("originals_in_map", len(roots))
	r.extra("clone_generations", gens)
	r.extra("clones_with_parent_in_map", parentPresent)
	r.must("clones_tracked", len(clones) > 0, "no clone entries while %d frames were queued", ours)
	r.must("clone_payload_intact", payloadOK == len(clones), "%d of %d clones carry an intact payload", payloadOK, len(clones))
	r.must("clone_has_original", withRoot == len(clones), "%d of %d clones descend from an original still in the map (originals: %d)", withRoot, len(clones), len(roots))
	r.must("clone_payload_is_parents", rootPayloadEq == withRoot, "%d of %d clones carry their original's payload and allocation time", rootPayloadEq, withRoot)
	r.must("clone_generation", genOK == parentPresent, "%d of %d clones with their parent in the map have generation parent+1", genOK, parentPresent)
	lost := ours - len(clones)
	r.extra("clones_lost", lost)
	r.must("no_clone_lost", lost <= 0, "%d of our %d queued frames have no clone entry (clones that lost their data)", lost, ours)
}
