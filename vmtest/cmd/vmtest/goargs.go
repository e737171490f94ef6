package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strings"

	"github.com/skbstore/skbstore/vmtest/gotest"
)

// goTestValueFlags are go test's flags that take their value as the next
// argument (build flags and test flags alike).
var goTestValueFlags = map[string]bool{
	"run": true, "skip": true, "count": true, "timeout": true, "bench": true, "benchtime": true, "cpu": true,
	"parallel": true, "p": true, "tags": true, "coverprofile": true, "covermode": true, "coverpkg": true,
	"cpuprofile": true, "memprofile": true, "memprofilerate": true, "blockprofile": true, "blockprofilerate": true,
	"mutexprofile": true, "mutexprofilefraction": true, "outputdir": true, "trace": true, "shuffle": true,
	"fuzz": true, "fuzztime": true, "fuzzminimizetime": true, "list": true, "exec": true, "o": true,
	"ldflags": true, "gcflags": true, "asmflags": true, "mod": true, "modfile": true, "overlay": true,
	"pkgdir": true, "toolexec": true, "vet": true, "C": true, "pgo": true,
}

// splitGoTestArgs separates the package patterns of a go test command line
// from its flags, and from what follows -args (kept whole, -args included:
// go test passes it to the test binary untouched, so it must stay last).
func splitGoTestArgs(args []string) (pkgs, flags, binArgs []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "-args" || a == "--args" {
			return pkgs, flags, append([]string(nil), args[i:]...)
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pkgs = append(pkgs, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if goTestValueFlags[name] && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return pkgs, flags, nil
}

// selectSuites expands patterns with go list and keeps the packages whose
// last path element (or whole import path) is in names.
func selectSuites(ctx context.Context, patterns, names []string) ([]string, error) {
	if len(patterns) == 0 {
		patterns = []string{"."}
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"list", "-f", "{{.ImportPath}}"}, patterns...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list %s: %w: %s", strings.Join(patterns, " "), err, strings.TrimSpace(stderr.String()))
	}
	all := strings.Fields(string(out))
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var pkgs []string
	found := map[string]bool{}
	for _, p := range all {
		short := gotest.ShortName(p)
		if want[short] || want[p] {
			pkgs = append(pkgs, p)
			found[short], found[p] = true, true
		}
	}
	var missing []string
	for _, n := range names {
		if !found[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		var avail []string
		for _, p := range all {
			avail = append(avail, gotest.ShortName(p))
		}
		sort.Strings(avail)
		return nil, fmt.Errorf("no suite named %s in %s; available: %s", strings.Join(missing, ", "),
			strings.Join(patterns, " "), strings.Join(avail, ", "))
	}
	return pkgs, nil
}
