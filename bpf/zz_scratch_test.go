package bpf

import (
	"net"
	"os"
	"testing"
	"time"
)

func TestScratch(t *testing.T) {
	if os.Getenv("SCRATCH") == "" && os.Getenv("VMTEST_GUEST") == "" {
		t.Skip()
	}
	for _, st := range Strategies {
		s, err := Load(Options{Strategy: st, Filter: Filter{TGID: uint32(os.Getpid())}, ObserveLeaks: true, VerifyPayload: true})
		if err != nil {
			if le, ok := err.(*LoadError); ok {
				for _, f := range le.Failed {
					t.Logf("%s: %s", f.Program, f.Log)
				}
			}
			t.Fatal(err)
		}
		t.Logf("kernel %+v skipped %+v", s.Kernel(), s.Skipped())
		for k, v := range s.VerifierLogs() {
			t.Logf("%s: %q", k, v)
		}
		if err := s.Attach(); err != nil {
			t.Fatal(err)
		}
		ln, _ := net.ListenPacket("udp", "127.0.0.1:0")
		c, _ := net.Dial("udp", ln.LocalAddr().String())
		buf := make([]byte, 2000)
		for i := 0; i < 100; i++ {
			c.Write([]byte("hello"))
			ln.ReadFrom(buf)
		}
		c.Close(); ln.Close()
		time.Sleep(100 * time.Millisecond)
		cn, _ := s.Counters()
		t.Logf("%s counters %+v", st, cn.Flat())
		es, _ := s.Entries()
		t.Logf("entries %d", len(es))
		for _, e := range es[:min(5, len(es))] {
			t.Logf("%+v ok=%v", e, e.Value.PayloadOK())
		}
		s.Close()
	}
}
