package vmtest

import (
	"regexp"
	"strings"
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

// scanSplats returns the splats in a kernel log, each reported once even if
// the same line shows up again (in the console and in dmesg).
func scanSplats(log string, seen map[string]bool) []Splat {
	var out []Splat
	for _, l := range strings.Split(log, "\n") {
		s, ok := findSplat(l)
		if !ok || seen[s.Line] {
			continue
		}
		seen[s.Line] = true
		out = append(out, s)
	}
	return out
}
