package report

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/skbstore/skbstore/vmtest/gotest"
)

// Markdown writes the matrix: a row per suite, a column per kernel, then the
// suites' measurements (metrics) in the same layout, then the details of what
// failed.
func (r *Report) Markdown(w io.Writer) error {
	var b strings.Builder
	t := r.Total()
	fmt.Fprintf(&b, "## vmtest: %d passed, %d failed, %d skipped", t.Passed, t.Failed, t.Skipped)
	if t.Unfinished > 0 {
		fmt.Fprintf(&b, ", %d unfinished", t.Unfinished)
	}
	b.WriteString("\n\n")
	if r.Interrupted {
		b.WriteString("**The run was interrupted**: cells marked unfinished did not complete.\n\n")
	}

	suites := r.suiteNames()
	b.WriteString("| suite |")
	for _, k := range r.Kernels {
		fmt.Fprintf(&b, " %s |", k.Name)
	}
	b.WriteString("\n|---|")
	for range r.Kernels {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, name := range suites {
		fmt.Fprintf(&b, "| %s |", name)
		for _, k := range r.Kernels {
			fmt.Fprintf(&b, " %s |", cell(k, k.suite(name)))
		}
		b.WriteString("\n")
	}
	b.WriteString("| *kernel* |")
	for _, k := range r.Kernels {
		fmt.Fprintf(&b, " %s |", kernelCell(k))
	}
	b.WriteString("\n")

	r.metricsTables(&b, suites)
	r.failures(&b)
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Report) suiteNames() []string {
	seen := map[string]bool{}
	var names []string
	for _, k := range r.Kernels {
		for _, s := range k.Suites {
			if !seen[s.Name] {
				seen[s.Name] = true
				names = append(names, s.Name)
			}
		}
	}
	sort.Strings(names)
	return names
}

func (k *Kernel) suite(name string) *Suite {
	for _, s := range k.Suites {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func cell(k *Kernel, s *Suite) string {
	if s == nil {
		if k.Outcome == gotest.Unfinished {
			return "unfinished"
		}
		return "–"
	}
	c := s.Counts
	var parts []string
	switch {
	case s.Failure != nil:
		parts = append(parts, "**"+s.Failure.Kind+"**")
	case s.Outcome == gotest.Unfinished || c.Unfinished > 0:
		parts = append(parts, "unfinished")
	case c.Failed > 0 || s.Outcome == gotest.Fail:
		parts = append(parts, "**FAIL**")
	default:
		parts = append(parts, "pass")
	}
	parts = append(parts, fmt.Sprintf("%d/%d", c.Passed, c.Passed+c.Failed+c.Unfinished))
	if c.Skipped > 0 {
		parts = append(parts, fmt.Sprintf("%d skipped", c.Skipped))
	}
	if len(s.Splats) > 0 {
		parts = append(parts, fmt.Sprintf("%d splat(s)", len(s.Splats)))
	}
	return strings.Join(parts, ", ")
}

func kernelCell(k *Kernel) string {
	s := k.Release
	if s == "" {
		s = k.Outcome
	}
	if k.Error != "" {
		s += " (" + k.Error + ")"
	}
	return s
}

// metricsTables writes, per suite that has metrics, a row per metric and a
// column per kernel.
func (r *Report) metricsTables(b *strings.Builder, suites []string) {
	for _, name := range suites {
		keys := map[string]bool{}
		for _, k := range r.Kernels {
			if s := k.suite(name); s != nil {
				for m := range s.Metrics {
					keys[m] = true
				}
			}
		}
		if len(keys) == 0 {
			continue
		}
		sorted := make([]string, 0, len(keys))
		for m := range keys {
			sorted = append(sorted, m)
		}
		sort.Strings(sorted)
		// Rows that are zero on every kernel say little in a table; they
		// are counted here and kept in report.json.
		var shown []string
		for _, m := range sorted {
			for _, k := range r.Kernels {
				if s := k.suite(name); s != nil && s.Metrics[m] != 0 {
					shown = append(shown, m)
					break
				}
			}
		}
		fmt.Fprintf(b, "\n### %s: measurements\n\n", name)
		if hidden := len(sorted) - len(shown); hidden > 0 {
			fmt.Fprintf(b, "%d of %d metrics are 0 on every kernel and not shown (all are in report.json).\n\n", hidden, len(sorted))
		}
		if len(shown) == 0 {
			continue
		}
		sorted = shown
		b.WriteString("| metric |")
		for _, k := range r.Kernels {
			fmt.Fprintf(b, " %s |", k.Name)
		}
		b.WriteString("\n|---|")
		for range r.Kernels {
			b.WriteString("---:|")
		}
		b.WriteString("\n")
		for _, m := range sorted {
			fmt.Fprintf(b, "| %s |", m)
			for _, k := range r.Kernels {
				v := "–"
				if s := k.suite(name); s != nil {
					if f, ok := s.Metrics[m]; ok {
						v = formatNumber(f)
					}
				}
				fmt.Fprintf(b, " %s |", v)
			}
			b.WriteString("\n")
		}
	}
}

func formatNumber(f float64) string {
	if f == float64(int64(f)) {
		return fmt.Sprintf("%d", int64(f))
	}
	return fmt.Sprintf("%.3g", f)
}

func (r *Report) failures(b *strings.Builder) {
	first := true
	header := func() {
		if first {
			b.WriteString("\n### What failed\n\n")
			first = false
		}
	}
	for _, k := range r.Kernels {
		if k.Error != "" {
			header()
			fmt.Fprintf(b, "- **%s**: %s\n", k.Name, k.Error)
		}
		for _, s := range k.Suites {
			if p := s.problem(); p != "" {
				header()
				fmt.Fprintf(b, "- **%s / %s**: %s (logs: `%s`)\n", k.Name, s.Name, p, s.Dir)
			}
			for _, t := range s.Tests {
				if t.Outcome == gotest.Fail || t.Outcome == gotest.Unfinished {
					header()
					fmt.Fprintf(b, "- %s / %s: `%s` %s\n", k.Name, s.Name, t.Name, t.Outcome)
				}
			}
		}
	}
}
