package vmtest

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
)

// Splat is a kernel report that means something went wrong in the guest
// kernel, even if every test passed: a WARN, a BUG, an oops, a lockdep or
// KASAN report, an RCU stall, a hung task.
type Splat struct {
	Kind string // short name, e.g. "WARNING", "BUG", "RCU stall"
	Line string // the kernel log line that starts it
}

var splatPatterns = []struct {
	kind string
	re   *regexp.Regexp
}{
	{"KASAN", regexp.MustCompile(`(BUG|WARNING): KASAN:`)},
	{"UBSAN", regexp.MustCompile(`UBSAN:`)},
	{"KFENCE", regexp.MustCompile(`BUG: KFENCE:`)},
	{"kmemleak", regexp.MustCompile(`unreferenced object 0x`)},
	{"lockdep", regexp.MustCompile(`WARNING: (possible circular locking|possible recursive locking|inconsistent lock state|suspicious RCU usage|possible irq lock inversion|lock held when returning)`)},
	{"RCU stall", regexp.MustCompile(`(rcu: INFO: rcu_\w+ (self-)?detected stall|INFO: rcu_\w+ (self-)?detected stall|rcu_\w+ kthread starved)`)},
	{"hung task", regexp.MustCompile(`INFO: task .+ blocked for more than \d+ seconds`)},
	{"soft lockup", regexp.MustCompile(`BUG: soft lockup`)},
	{"oops", regexp.MustCompile(`(Oops: |general protection fault|kernel BUG at )`)},
	{"BUG", regexp.MustCompile(`^BUG: `)},
	{"WARNING", regexp.MustCompile(`^WARNING: `)},
}

var timestamp = regexp.MustCompile(`^\[\s*\d+\.\d+\]\s?`)

// findSplat returns the splat a kernel log line starts, if any.
func findSplat(line string) (Splat, bool) {
	msg := strings.TrimRight(timestamp.ReplaceAllString(line, ""), "\r\n")
	for _, p := range splatPatterns {
		if p.re.MatchString(msg) {
			return Splat{Kind: p.kind, Line: msg}, true
		}
	}
	return Splat{}, false
}

// maxSplats bounds the splats kept for one boot: a kernel that warns in a
// loop must not fill the host's memory.
const maxSplats = 100

// splatScanner collects the splats of a boot from the lines of its console
// and kernel log, each reported once even when it shows in both.
type splatScanner struct {
	mu     sync.Mutex
	seen   map[string]bool
	splats []Splat
	more   int // splats past maxSplats
}

func (s *splatScanner) line(l string) {
	sp, ok := findSplat(l)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen[sp.Line] {
		return
	}
	if len(s.splats) >= maxSplats {
		s.more++
		return
	}
	if s.seen == nil {
		s.seen = map[string]bool{}
	}
	s.seen[sp.Line] = true
	s.splats = append(s.splats, sp)
}

func (s *splatScanner) result() []Splat {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := append([]Splat(nil), s.splats...)
	if s.more > 0 {
		out = append(out, Splat{Kind: "more", Line: fmt.Sprintf("%d more kernel reports, see the logs", s.more)})
	}
	return out
}
