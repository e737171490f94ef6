package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/skbstore/skbstore/vmtest/internal/history"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBootPerKernel runs a module's packages with -boot per-kernel: go test
// reports each package as usual; the packages before a kernel panic share
// one boot (the same boot ID), each in its own directory with its testdata,
// its environment and its coverage; the package that panics the kernel
// fails alone, with the panic as the reason, and the next one passes in a
// fresh guest. The coverage profile go test merges from every package
// comes home.
func TestBootPerKernel(t *testing.T) {
	bin := vmtestBin(t)
	mod, write := tempModule(t, "example.com/perkernel")
	pkg := func(name string) {
		write(name+"/testdata/name.txt", name)
		write(name+"/"+name+".go", "package "+name+"\n\nfunc Name() string { return \""+name+"\" }\n")
		write(name+"/"+name+"_test.go", `package `+name+`

import (
	"os"
	"path/filepath"
	"testing"
)

func TestInGuest(t *testing.T) {
	if os.Getenv("VMTEST_GUEST") != "1" {
		t.Fatal("not in a guest")
	}
	b, err := os.ReadFile("testdata/name.txt")
	if err != nil || string(b) != Name() {
		t.Fatalf("testdata/name.txt from the package's directory: %q, %v", b, err)
	}
	if os.Getenv("PERKERNEL_LEAK") != "" {
		t.Fatal("the environment of an earlier package leaked")
	}
	id, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(os.Getenv("VMTEST_ARTIFACTS"), "boot_id"), id, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Setenv("PERKERNEL_LEAK", "1")
}
`)
	}
	for _, p := range []string{"p1", "p2", "p4"} {
		pkg(p)
	}
	write("p3/p3_test.go", `package p3

import (
	"os"
	"testing"
	"time"
)

func TestPanic(t *testing.T) {
	if err := os.WriteFile("/proc/sysrq-trigger", []byte("c"), 0o200); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Minute)
}
`)
	results := t.TempDir()
	// -p 1: the packages run in order, so which share the boot is known.
	cmd := exec.Command(bin, "run", "-kernel", "6.1", "-boot", "per-kernel", "-results", results, "--",
		"go", "test", "-p", "1", "-coverprofile", "cover.out", "./...")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "VMTEST_SRC=")
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	require.Error(t, err, "the package that panics the kernel fails the run")
	assert.Contains(t, string(out), "3 passed, 1 failed, 0 skipped")

	dir := runDirOf(t, results)
	rep := readReport(t, dir)
	require.Len(t, rep.Kernels, 1)
	suites := map[string]string{}
	bootIDs := map[string]string{}
	for _, s := range rep.Kernels[0].Suites {
		suites[s.Name] = s.Outcome
		if s.Name == "p3" {
			require.NotNil(t, s.Failure, "the panic is the reason")
			assert.Equal(t, "kernel panic", s.Failure.Kind)
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, s.Dir, "artifacts", s.Name, "boot_id"))
		require.NoError(t, err, s.Name)
		bootIDs[s.Name] = strings.TrimSpace(string(b))
	}
	assert.Equal(t, map[string]string{"p1": "pass", "p2": "pass", "p3": "fail", "p4": "pass"}, suites)
	assert.Equal(t, bootIDs["p1"], bootIDs["p2"], "p1 and p2 ran in one boot")
	assert.NotEqual(t, bootIDs["p2"], bootIDs["p4"], "p4 ran in a fresh guest after the panic")
	assert.DirExists(t, filepath.Join(dir, "6.1", ".boot-2"))

	cover, err := os.ReadFile(filepath.Join(mod, "cover.out"))
	require.NoError(t, err, "go test's merged coverage profile")
	for _, p := range []string{"p1", "p2", "p4"} {
		assert.Contains(t, string(cover), "example.com/perkernel/"+p+"/"+p+".go")
	}
}

// tempModule makes an empty module of path and returns its directory and a
// function that writes a file into it.
func tempModule(t *testing.T, path string) (string, func(path, content string)) {
	mod := t.TempDir()
	write := func(p, content string) {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(mod, p)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(mod, p), []byte(content), 0o644))
	}
	write("go.mod", "module "+path+"\n\ngo 1.24\n")
	return mod, write
}

// TestBootPerKernelSharesSlots runs two kernels' packages with one guest
// slot (-vms 1): each kernel's guest waits for the slot the other holds and
// gets it when that kernel is done, so the run ends, with one guest per
// kernel. (A server once waited for a slot its own idle guest held, and the
// run never ended.)
func TestBootPerKernelSharesSlots(t *testing.T) {
	bin := vmtestBin(t)
	mod, write := tempModule(t, "example.com/perkernel")
	for _, p := range []string{"a", "b"} {
		write(p+"/"+p+"_test.go", "package "+p+"\n\nimport \"testing\"\n\nfunc TestPass(t *testing.T) {}\n")
	}
	results := t.TempDir()
	cmd := exec.Command(bin, "run", "-kernel", "6.1,6.12", "-vms", "1", "-results", results, "--", "go", "test", "./...")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "VMTEST_SRC=")
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(5 * time.Minute):
			cmd.Process.Kill()
		}
	}()
	out, err := cmd.CombinedOutput()
	close(done)
	t.Logf("%s", out)
	require.NoError(t, err)
	assert.Contains(t, string(out), "4 passed, 0 failed, 0 skipped")
	dir := runDirOf(t, results)
	for _, k := range []string{"6.1", "6.12"} {
		boots, _ := filepath.Glob(filepath.Join(dir, k, ".boot-*"))
		assert.Len(t, boots, 1, "kernel %s: one guest for its two packages", k)
	}
}

// TestLongestFirst runs three packages that wait for the one guest of
// -vms 1 (each holds it for two seconds, so the others queue up): the one
// that ran longest last time (as the history in the cache says) does not
// run last, though go test starts it last; and the run records each
// package's time for the next.
func TestLongestFirst(t *testing.T) {
	bin := vmtestBin(t)
	mod, write := tempModule(t, "example.com/longest")
	pkgs := []string{"a", "b", "c"}
	for _, p := range pkgs {
		// When it ran, on the clock of the guest they share.
		write(p+"/"+p+"_test.go", "package "+p+"\n\nimport (\n\t\"testing\"\n\t\"time\"\n)\n\n"+
			"func TestPass(t *testing.T) {\n\tt.Logf(\"at=%d\", time.Now().UnixNano())\n\ttime.Sleep(2 * time.Second)\n}\n")
	}
	dir, err := cacheDir()
	require.NoError(t, err)
	path := filepath.Join(dir, "history.json")
	h := history.Open(path)
	for p, d := range map[string]time.Duration{"a": time.Second, "b": 2 * time.Second, "c": 100 * time.Second} {
		h.Record("6.1", filepath.Join(mod, p), d)
	}
	require.NoError(t, h.Save())

	results := t.TempDir()
	cmd := exec.Command(bin, "run", "-kernel", "6.1", "-vms", "1", "-results", results, "--", "go", "test", "-v", "-p", "3", "./...")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "VMTEST_SRC=")
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	require.NoError(t, err)
	// go test prints the packages in its own order: when each ran is
	// in its output.
	at := map[string]int64{}
	events, err := os.ReadFile(filepath.Join(runDirOf(t, results), "6.1", "events.json"))
	require.NoError(t, err)
	for _, l := range strings.Split(strings.TrimSpace(string(events)), "\n") {
		var e struct{ Package, Output string }
		require.NoError(t, json.Unmarshal([]byte(l), &e))
		if _, v, ok := strings.Cut(e.Output, "at="); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			require.NoError(t, err)
			at[e.Package[strings.LastIndex(e.Package, "/")+1:]] = n
		}
	}
	require.Len(t, at, 3, "every package says when it ran")
	assert.Less(t, at["c"], max(at["a"], at["b"]), "the package that ran longest last time is not the last")
	h = history.Open(path)
	for _, p := range pkgs {
		d := h.Expect("6.1", filepath.Join(mod, p))
		assert.True(t, d >= 2*time.Second && d < 100*time.Second, "package %s: %v recorded", p, d)
	}
}
