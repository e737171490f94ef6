package skbbench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/skbstore/skbstore/bpf"
	"github.com/skbstore/skbstore/suites/internal/artifacts"
	"github.com/skbstore/skbstore/suites/internal/testenv"
)

// tagPort is the tagged flow's port (as suites/tagflow's).
const tagPort = 40123

// tagTrial sends udpDatagrams tagged datagrams (the payload tagflow.c
// derives a tag from) over the veth pair, each read before the next.
func tagTrial(p *testenv.VethPair) (trial, error) {
	return udpTrialWith(endpoints{pair: p}, tagPort, func(msg []byte, i int) {
		binary.BigEndian.PutUint32(msg, 0x54414746) // "TAGF"
		binary.BigEndian.PutUint32(msg[4:], uint32(i))
	})
}

// TestTagPatternCost: what carrying a per-packet tag from tc ingress to the
// socket costs per packet, the thread's pattern (tc writes the map, the
// socket layer reads it, consume_skb / kfree_skb delete it) against the
// same tag in skb->mark (tc writes it, the socket layer reads it), against
// no programs: packets/s of one-by-one UDP datagrams over a veth pair,
// configurations interleaved. It fails only if a configuration measured
// nothing or the programs saw none of the flow.
func TestTagPatternCost(t *testing.T) {
	testenv.RequireGuest(t)
	start := time.Now()
	pair, err := testenv.NewVethPair()
	if err != nil {
		t.Fatalf("veth pair: %v", err)
	}
	defer pair.Close()
	configs := []string{"none", "mark", "map"}
	pps := map[string][]float64{}
	for rep := 0; rep < storageReps; rep++ {
		for _, c := range configs {
			var tf *bpf.TagFlow
			var detach func() error
			if c != "none" {
				tf, err = bpf.LoadTagFlow(bpf.TagFlowOptions{Port: tagPort, MarkOnly: c == "mark", NoMark: c == "map"})
				if err != nil {
					t.Fatalf("%s: load: %v", c, err)
				}
				if c == "map" {
					err = tf.AttachFreeHooks()
				}
				if err == nil {
					err = tf.AttachCgroup("/sys/fs/cgroup")
				}
				if err == nil {
					detach, err = testenv.AttachTC(pair.B, "skbst1", tf.IngressWriter().FD(), true, 1)
				}
				if err != nil {
					tf.Close()
					t.Fatalf("%s: attach: %v", c, err)
				}
			}
			tr, err := tagTrial(pair)
			if tf != nil {
				counts, cerr := tf.Counts()
				derr := detach()
				tf.Close()
				if cerr != nil || derr != nil {
					t.Fatalf("%s: %v", c, errors.Join(cerr, derr))
				}
				if rd := counts.Readers[bpf.ReaderCgroup]; counts.Writer.Written < udpDatagrams || rd.Seen < udpDatagrams {
					t.Fatalf("%s: the programs missed the flow: %d tags written, %d read, for %d datagrams", c, counts.Writer.Written, rd.Seen, udpDatagrams)
				}
			}
			if err != nil {
				t.Fatalf("%s (rep %d): %v", c, rep, err)
			}
			pps[c] = append(pps[c], tr.pps())
		}
	}
	med := map[string]float64{}
	for _, c := range configs {
		if med[c] = median(pps[c]); !(med[c] > 0) {
			t.Fatalf("%s measured nothing: %v", c, pps[c])
		}
	}
	perPacket := func(c string) float64 { return (1/med[c] - 1/med["none"]) * 1e9 } // ns added per packet
	metrics := map[string]any{"note": emulationNote}
	var md strings.Builder
	md.WriteString("## The tag pattern's cost per packet\n\n")
	fmt.Fprintf(&md, "%d one-by-one %d-byte UDP datagrams over a veth pair, each read before the next; median packets/s of %d repetitions, configurations interleaved. map: tc ingress writes the tag into the skb-keyed map, cgroup_skb ingress reads it, consume_skb/kfree_skb delete it. mark: tc ingress writes skb->mark, cgroup_skb ingress reads it.\n\n",
		udpDatagrams, udpSize, storageReps)
	md.WriteString("| configuration | packets/s | ratio to none | ns added per packet |\n|---|---:|---:|---:|\n")
	for _, c := range configs {
		ratio := med[c] / med["none"]
		metrics["tag."+c+".pps_ratio"] = round(ratio, 3)
		if c != "none" {
			metrics["tag."+c+".ns_per_packet"] = round(perPacket(c), 0)
		}
		fmt.Fprintf(&md, "| %s | %.0f | %.3f | %.0f |\n", c, med[c], ratio, perPacket(c))
		t.Logf("%-5s %8.0f packets/s  ratio %.3f  +%.0f ns/packet  %s", c, med[c], ratio, perPacket(c), fmtSamples(pps[c]))
	}
	if extra := perPacket("mark"); extra > 0 {
		metrics["tag.map_vs_mark"] = round(perPacket("map")/extra, 2)
		fmt.Fprintf(&md, "\nThe map pattern adds %.1fx what the mark adds per packet.\n", perPacket("map")/extra)
	}
	d := time.Since(start)
	fmt.Fprintf(&md, "\nTook %v in the guest.\n", d.Round(time.Second))
	addSection("tagpattern", md.String())
	artifacts.SaveJSON(t, "metrics/tag_pattern_cost.json", metrics)
	artifacts.SaveJSON(t, "bench/tag_pattern_cost.json", map[string]any{"kernel": testenv.KernelRelease(), "pps": pps, "metrics": metrics, "duration_ms": d.Milliseconds()})
	t.Logf("%s\n%s", emulationNote, md.String())
}
