package kernels

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
)

// How modules.dep is made for a kernel tree whose packages do not ship it
// (no Debian kernel package does: depmod runs at install time).
const (
	depmodAuto    = ""        // kmod's depmod if installed, else builtin
	depmodKmod    = "kmod"    // kmod's depmod, error if missing
	depmodBuiltin = "builtin" // this package's own generator
)

// findDepmod finds kmod's depmod, also where a non-root PATH lacks sbin.
func findDepmod() (string, error) {
	if p, err := exec.LookPath("depmod"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/depmod", "/sbin/depmod", "/usr/bin/depmod", "/bin/depmod"} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", errors.New("depmod not found (install the kmod package)")
}

// makeModulesDep writes modules.dep (and friends) into root/lib/modules/rel.
// It returns which generator did it, for the cache metadata.
func makeModulesDep(ctx context.Context, root, rel, mode string, progress io.Writer) (string, error) {
	modDir := filepath.Join(root, "lib", "modules", rel)
	if mode == depmodAuto || mode == depmodKmod {
		err := runKmodDepmod(ctx, root, rel)
		if err == nil {
			return depmodKmod, nil
		}
		if mode == depmodKmod || ctx.Err() != nil {
			return "", err
		}
		// Slower (pure Go xz) but needs nothing on the host.
		fmt.Fprintf(progress, "kernels: %v; generating modules.dep without it (installing kmod makes this faster)\n", err)
	}
	if err := builtinDepmod(ctx, modDir, modDir); err != nil {
		return "", err
	}
	return depmodBuiltin, nil
}

func runKmodDepmod(ctx context.Context, root, rel string) error {
	depmod, err := findDepmod()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, depmod, "-b", root, rel)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s -b %s %s: %w: %s", depmod, root, rel, err, tail(stderr.String()))
	}
	// A kmod built for /usr/lib/modules would have looked elsewhere.
	if _, err := os.Stat(filepath.Join(root, "lib", "modules", rel, "modules.dep")); err != nil {
		return fmt.Errorf("%s -b %s %s made no lib/modules/%s/modules.dep: %s", depmod, root, rel, rel, tail(stderr.String()))
	}
	return nil
}

// builtinDepmod writes modules.dep, modules.alias and modules.softdep for
// the modules in modDir into outDir, from each module's .modinfo (depends=,
// alias=, softdep=), which modpost filled from the same symbol resolution
// depmod does.
func builtinDepmod(ctx context.Context, modDir, outDir string) error {
	var rels []string
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && isModuleFile(d.Name()) {
			r, err := filepath.Rel(modDir, p)
			if err != nil {
				return err
			}
			rels = append(rels, filepath.ToSlash(r))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list modules: %w", err)
	}
	infos := make([]modinfo, len(rels))
	errs := make([]error, len(rels))
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.NumCPU() {
		wg.Go(func() {
			for i := range next {
				infos[i], errs[i] = readModinfo(filepath.Join(modDir, rels[i]))
			}
		})
	}
	for i := range rels {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	byName := map[string]int{}
	for i, r := range rels {
		n := moduleName(r)
		if v := infos[i].get("name"); len(v) > 0 {
			n = moduleName(v[0])
		}
		byName[n] = i
	}
	direct := make([][]int, len(rels))
	for i := range rels {
		for _, list := range infos[i].get("depends") {
			for _, d := range strings.Split(list, ",") {
				if d = strings.TrimSpace(d); d == "" {
					continue
				}
				j, ok := byName[moduleName(d)]
				if !ok {
					return fmt.Errorf("module %s depends on %s, which is not in %s", rels[i], d, modDir)
				}
				direct[i] = append(direct[i], j)
			}
		}
	}

	order := moduleOrder(modDir)
	lines := make([]int, len(rels))
	for i := range lines {
		lines[i] = i
	}
	slices.SortStableFunc(lines, func(a, b int) int {
		oa, okA := order[moduleName(rels[a])]
		ob, okB := order[moduleName(rels[b])]
		switch {
		case okA && okB && oa != ob:
			return oa - ob
		case okA != okB:
			if okA {
				return -1
			}
			return 1
		}
		return strings.Compare(rels[a], rels[b])
	})

	var dep, alias, softdep strings.Builder
	alias.WriteString("# Aliases extracted from modules themselves.\n")
	softdep.WriteString("# Soft dependencies extracted from modules themselves.\n")
	for _, i := range lines {
		dep.WriteString(rels[i] + ":")
		for _, j := range closure(i, direct) {
			dep.WriteString(" " + rels[j])
		}
		dep.WriteString("\n")
		name := moduleName(rels[i])
		for _, a := range infos[i].get("alias") {
			fmt.Fprintf(&alias, "alias %s %s\n", a, name)
		}
		for _, s := range infos[i].get("softdep") {
			fmt.Fprintf(&softdep, "softdep %s %s\n", name, s)
		}
	}
	for file, content := range map[string]string{"modules.dep": dep.String(), "modules.alias": alias.String(), "modules.softdep": softdep.String()} {
		if err := writeFileAtomic(filepath.Join(outDir, file), []byte(content)); err != nil {
			return err
		}
	}
	return nil
}

// closure lists everything module i needs, the modules it needs directly
// first and the deepest last, as depmod does (loaders read it backwards).
func closure(i int, direct [][]int) []int {
	var post []int
	seen := map[int]bool{i: true}
	var visit func(int)
	visit = func(m int) {
		for _, d := range direct[m] {
			if !seen[d] {
				seen[d] = true
				visit(d)
				post = append(post, d)
			}
		}
	}
	visit(i)
	slices.Reverse(post)
	return post
}

// moduleOrder reads modules.order (the build's link order) if present.
func moduleOrder(modDir string) map[string]int {
	b, _ := os.ReadFile(filepath.Join(modDir, "modules.order"))
	m := map[string]int{}
	for i, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			if _, dup := m[moduleName(line)]; !dup {
				m[moduleName(line)] = i
			}
		}
	}
	return m
}

// tail keeps the end of a command's output for an error message.
func tail(s string) string {
	s = strings.TrimSpace(s)
	const max = 2000
	if len(s) > max {
		s = "..." + s[len(s)-max:]
	}
	if s == "" {
		return "(no output)"
	}
	return s
}
