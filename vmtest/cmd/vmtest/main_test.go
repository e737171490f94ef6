package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"
	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/vmtest/report"
)

// These tests run the real vmtest binary: they boot Debian's 6.1 and 6.12
// kernels under QEMU and run the sample guest tests in them.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func vmtestBin(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("boots real kernels under QEMU; skipped with -short")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vmtest-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "vmtest")
		cmd := exec.Command("go", "build", "-o", binPath, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = err
			t.Logf("%s", out)
		}
	})
	require.NoError(t, buildErr)
	return binPath
}

const repoRoot = "../../.."

func runVMTest(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(vmtestBin(t), args...)
	cmd.Dir = repoRoot
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	t.Logf("vmtest %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, o.String(), e.String())
	return o.String(), e.String(), code
}

func readReport(t *testing.T, dir string) *report.Report {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	require.NoError(t, err)
	var r report.Report
	require.NoError(t, json.Unmarshal(b, &r))
	return &r
}

func runDirOf(t *testing.T, results string) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(filepath.Join(results, "latest"))
	require.NoError(t, err)
	return dir
}

type junitDoc struct {
	Tests    int `xml:"tests,attr"`
	Failures int `xml:"failures,attr"`
	Skipped  int `xml:"skipped,attr"`
	Suites   []struct {
		Name  string `xml:"name,attr"`
		Cases []struct {
			Name    string    `xml:"name,attr"`
			Failure *struct{} `xml:"failure"`
			Skipped *struct{} `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

func TestMatrixReportsMatchGuestResults(t *testing.T) {
	results := t.TempDir()
	stdout, _, code := runVMTest(t, "run", "-kernel", "6.1,6.12", "-results", results, "--",
		"go", "test", "./vmtest/testdata/sample", "-run", "^(TestPass|TestFailOnPurpose|TestSkip)$")
	assert.Equal(t, 1, code, "a failing test must fail the run")
	assert.Contains(t, stdout, "2 passed, 2 failed, 2 skipped")
	dir := runDirOf(t, results)

	want := map[string]string{"TestPass": "pass", "TestFailOnPurpose": "fail", "TestSkip": "skip"}
	rep := readReport(t, dir)
	require.Len(t, rep.Kernels, 2)
	assert.False(t, rep.Interrupted)
	for i, name := range []string{"6.1", "6.12"} {
		k := rep.Kernels[i]
		assert.Equal(t, name, k.Name)
		assert.True(t, strings.HasPrefix(k.Release, name+"."), "release %q", k.Release)
		assert.NotEmpty(t, k.Packages, "the exact Debian package is recorded")
		assert.Equal(t, "fail", k.Outcome)
		require.Len(t, k.Suites, 1)
		s := k.Suites[0]
		got := map[string]string{}
		for _, tt := range s.Tests {
			got[tt.Name] = tt.Outcome
		}
		assert.Equal(t, want, got, "kernel %s", name)
		assert.Equal(t, report.Counts{Passed: 1, Failed: 1, Skipped: 1}, s.Counts)
		assert.NotEmpty(t, s.Accel)
		assert.Positive(t, s.BootSeconds)

		// The report agrees with what the guest itself printed.
		out, err := os.ReadFile(filepath.Join(dir, s.Dir, "sample.out"))
		require.NoError(t, err)
		for test, outcome := range want {
			assert.Contains(t, string(out), "--- "+strings.ToUpper(outcome)+": "+test+" ")
		}
		uname, err := os.ReadFile(filepath.Join(dir, s.Dir, "artifacts", "sample", "uname.txt"))
		require.NoError(t, err)
		assert.Equal(t, k.Release, string(uname))
	}

	b, err := os.ReadFile(filepath.Join(dir, "junit.xml"))
	require.NoError(t, err)
	var j junitDoc
	require.NoError(t, xml.Unmarshal(b, &j))
	assert.Equal(t, 6, j.Tests)
	assert.Equal(t, 2, j.Failures)
	assert.Equal(t, 2, j.Skipped)
	require.Len(t, j.Suites, 2)
	for _, s := range j.Suites {
		for _, c := range s.Cases {
			switch want[c.Name] {
			case "pass":
				assert.Nil(t, c.Failure, c.Name)
				assert.Nil(t, c.Skipped, c.Name)
			case "fail":
				assert.NotNil(t, c.Failure, c.Name)
			case "skip":
				assert.NotNil(t, c.Skipped, c.Name)
			default:
				t.Errorf("unexpected test case %s in %s", c.Name, s.Name)
			}
		}
	}

	md, err := os.ReadFile(filepath.Join(dir, "summary.md"))
	require.NoError(t, err)
	assert.Contains(t, string(md), "| suite | 6.1 | 6.12 |")
	assert.Regexp(t, regexp.MustCompile(`\| sample \| \*\*FAIL\*\*, 1/2, 1 skipped \| \*\*FAIL\*\*, 1/2, 1 skipped \|`), string(md))
	assert.Contains(t, string(md), "`TestFailOnPurpose` fail")

	// Re-running the failures runs only the failed test, on both kernels.
	results2 := t.TempDir()
	_, _, code = runVMTest(t, "run", "-results", results2, "-rerun-failed", dir)
	assert.Equal(t, 1, code)
	rep2 := readReport(t, runDirOf(t, results2))
	require.Len(t, rep2.Kernels, 2)
	for _, k := range rep2.Kernels {
		require.Len(t, k.Suites, 1)
		require.Len(t, k.Suites[0].Tests, 1, "kernel %s", k.Name)
		assert.Equal(t, "TestFailOnPurpose", k.Suites[0].Tests[0].Name)
	}
}

func TestInterruptKeepsCompletedKernels(t *testing.T) {
	results := t.TempDir()
	cmd := exec.Command(vmtestBin(t), "run", "-kernel", "6.1,6.12", "-results", results, "--",
		"go", "test", "./vmtest/testdata/sample", "-run", "^(TestPass|TestHangOn612)$")
	cmd.Dir = repoRoot
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())

	// Interrupt once 6.1 is done and 6.12 hangs in its guest.
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(out.String(), "[6.1] done") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("6.1 never finished:\n%s", out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
	err := cmd.Wait()
	t.Logf("output:\n%s", out.String())
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee)
	assert.Equal(t, 130, ee.ExitCode())

	dir := runDirOf(t, results)
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte("qemu")) && bytes.Contains(b, []byte(dir)) {
			t.Errorf("QEMU left behind: %s", bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}

	rep := readReport(t, dir)
	assert.True(t, rep.Interrupted)
	require.Len(t, rep.Kernels, 2)
	k61, k612 := rep.Kernels[0], rep.Kernels[1]
	assert.Equal(t, "pass", k61.Outcome)
	assert.Equal(t, report.Counts{Passed: 2}, k61.Counts)
	assert.Equal(t, "unfinished", k612.Outcome)
	require.Len(t, k612.Suites, 1)
	require.NotNil(t, k612.Suites[0].Failure)
	assert.Equal(t, "cancelled", k612.Suites[0].Failure.Kind)
	assert.FileExists(t, filepath.Join(dir, k612.Suites[0].Dir, "console.log"))
	md, err := os.ReadFile(filepath.Join(dir, "summary.md"))
	require.NoError(t, err)
	assert.Contains(t, string(md), "interrupted")
}

func TestBadInputFailsFast(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown kernel", []string{"run", "-kernel", "6.8", "--", "go", "test", "./vmtest/testdata/sample"}, "5.10"},
		{"garbage kernel", []string{"run", "-kernel", "six", "--", "go", "test", "./vmtest/testdata/sample"}, "six"},
		{"unknown suite", []string{"run", "-suites", "nosuch", "--", "go", "test", "./vmtest/..."}, "no suite named nosuch"},
		{"not go test", []string{"run", "--", "make", "x"}, "go test"},
		{"no CPUs", []string{"run", "-cpus", "0", "--", "go", "test", "./vmtest/testdata/sample"}, "-cpus 0"},
		{"no memory", []string{"exec", "-memory", "0", "/bin/true"}, "-memory 0"},
		{"negative timeout", []string{"run", "-timeout", "-1s", "--", "go", "test", "./vmtest/testdata/sample"}, "-timeout -1s"},
		{"bad size", []string{"run", "-max-output", "lots", "--", "go", "test", "./vmtest/testdata/sample"}, "-max-output"},
		{"unknown accel", []string{"exec", "-accel", "hvf", "/bin/true"}, "-accel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			args := append([]string{tt.args[0], "-results", t.TempDir()}, tt.args[1:]...)
			_, stderr, code := runVMTest(t, args...)
			assert.NotEqual(t, 0, code)
			assert.Contains(t, stderr, tt.want)
			assert.Less(t, time.Since(start), 30*time.Second)
		})
	}
}

// TestExecResultsNotEmpty: exec into a results directory that holds an
// earlier run's files is refused before booting, with the reason.
func TestExecResultsNotEmpty(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "console.log"), []byte("earlier"), 0o644))
	_, stderr, code := runVMTest(t, "exec", "-kernel", "6.1", "-results", dir, "/bin/true")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "already holds files (console.log")
	b, err := os.ReadFile(filepath.Join(dir, "console.log"))
	require.NoError(t, err)
	assert.Equal(t, "earlier", string(b), "the earlier run's files are left alone")
}

// TestEverySkippedFails: a run in which every test skipped checked nothing and
// must not pass, unless -allow-skip says that is fine.
func TestEverySkippedFails(t *testing.T) {
	for _, allow := range []bool{false, true} {
		args := []string{"run", "-results", t.TempDir()}
		if allow {
			args = append(args, "-allow-skip")
		}
		stdout, _, code := runVMTest(t, append(args, "--", "go", "test", "./vmtest/testdata/sample", "-run", "^TestSkip$")...)
		if allow {
			assert.Equal(t, 0, code)
			assert.Contains(t, stdout, "0 passed, 0 failed, 1 skipped")
		} else {
			assert.Equal(t, 1, code)
			assert.Contains(t, stdout, "0 passed, 1 failed, 1 skipped")
			assert.Contains(t, stdout, "every test of sample skipped")
		}
	}
}

// TestForeignModuleUnderTmp runs the tests of a module that lives under /tmp,
// as a checkout there would, with no source of vmtest at hand (as after go
// install): its test reads a testdata file through a link and from a parent
// directory, the kernel's config where tests look for it, and writes to the
// temporary directory; all as plain go test would let it.
func TestForeignModuleUnderTmp(t *testing.T) {
	bin := vmtestBin(t)
	mod, write := tempModule(t, "example.com/foreign")
	write("testdata/real.txt", "through the link\n")
	require.NoError(t, os.Symlink("real.txt", filepath.Join(mod, "testdata", "link.txt")))
	write("pkg/files/files_test.go", `package files

import (
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestFiles(t *testing.T) {
	if os.Getenv("VMTEST_GUEST") != "1" {
		t.Fatal("not in a guest")
	}
	b, err := os.ReadFile("../../testdata/link.txt")
	if err != nil || string(b) != "through the link\n" {
		t.Fatalf("../../testdata/link.txt: %q, %v", b, err)
	}
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var rel []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	cfg, err := os.ReadFile("/boot/config-" + string(rel))
	if err != nil || !strings.Contains(string(cfg), "CONFIG_BPF_SYSCALL=y") {
		t.Fatalf("kernel config: %v", err)
	}
	if err := os.WriteFile(t.TempDir()+"/x", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}
`)
	cmd := exec.Command(bin, "run", "-kernel", "6.1", "-results", t.TempDir(), "--", "go", "test", "./...")
	cmd.Dir = mod
	// No source of vmtest around: the vmtest program itself is the agent,
	// as for one installed with go install.
	cmd.Env = append(os.Environ(), "VMTEST_SRC=")
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	require.NoError(t, err)
	assert.Contains(t, string(out), "1 passed, 0 failed, 0 skipped")
}

// TestProfilesComeHome: what go test asks the binary to write in the guest
// (a coverage profile, a CPU profile relative to -outputdir, the coverage
// directory) comes back where go test looks for it, so that go tool cover
// and go tool pprof read it as without a VM.
func TestProfilesComeHome(t *testing.T) {
	out := t.TempDir()
	cov, cpu := filepath.Join(out, "cov.out"), filepath.Join(out, "cpu.out")
	_, _, code := runVMTest(t, "run", "-results", t.TempDir(), "--", "go", "test", "./vmtest/testdata/sample",
		"-run", "^TestPass$", "-coverprofile="+cov, "-outputdir="+out, "-cpuprofile=cpu.out")
	require.Equal(t, 0, code)
	b, err := os.ReadFile(cov)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(b), "mode: "), "coverage profile: %.80q", b)
	ct := exec.Command("go", "tool", "cover", "-func="+cov)
	ct.Dir = repoRoot
	funcs, err := ct.CombinedOutput()
	require.NoError(t, err, "%s", funcs)
	assert.Contains(t, string(funcs), "total:")
	st, err := os.Stat(cpu)
	require.NoError(t, err, "the CPU profile came back")
	assert.Greater(t, st.Size(), int64(0))
	pp := exec.Command("go", "tool", "pprof", "-top", cpu)
	pp.Dir = repoRoot
	top, err := pp.CombinedOutput()
	require.NoError(t, err, "%s", top)
}

// TestDynamicBinaries: a -race test binary (dynamically linked, cgo) runs in
// the guest with the host's C library, and so does a plain C program.
func TestDynamicBinaries(t *testing.T) {
	stdout, _, code := runVMTest(t, "run", "-results", t.TempDir(), "--", "go", "test", "-race", "./vmtest/testdata/sample", "-run", "^TestPass$", "-v")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "1 passed, 0 failed, 0 skipped")
	_, _, code = runVMTest(t, "exec", "-results", t.TempDir(), "/bin/false")
	assert.Equal(t, 1, code, "/bin/false ran in the guest and failed")
	_, _, code = runVMTest(t, "exec", "-results", t.TempDir(), "/bin/true")
	assert.Equal(t, 0, code, "/bin/true ran in the guest")
}

// TestGuestFeaturesOnAndOff: a test that needs a feature of the guest
// passes with it and fails, saying why, with it switched off. Autoload: the
// kernel's request for geneve, sch_ingress and cls_flower is answered by the
// guest's modprobe from the modules disk. Commands: uname and ip on PATH.
func TestGuestFeaturesOnAndOff(t *testing.T) {
	tests := []struct {
		name, run, off, why string
	}{
		{"autoload", "^TestAutoload$", "-autoload=false", "add geneve link (module geneve, alias rtnl-link-geneve): operation not supported"},
		{"commands", "^TestCommands$", "-commands=false", `uname -r: exec: "uname": executable file not found in $PATH`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, on := range []bool{true, false} {
				args := []string{"run", "-kernel", "6.1", "-results", t.TempDir()}
				if !on {
					args = append(args, tt.off)
				}
				args = append(args, "--", "go", "test", "./vmtest/testdata/sample", "-run", tt.run, "-v")
				stdout, _, code := runVMTest(t, args...)
				if on {
					assert.Equal(t, 0, code, "passes with the feature")
					assert.Contains(t, stdout, "1 passed, 0 failed, 0 skipped")
				} else {
					assert.Equal(t, 1, code, "fails without the feature (%s)", tt.off)
					assert.Contains(t, stdout, tt.why)
				}
			}
		})
	}
}

// TestGoInstall installs vmtest as a user would, go install
// <module>/vmtest/cmd/vmtest@<version> with an empty HOME and GOPATH, from a
// module proxy serving this checkout as a version (and the dependencies
// from this machine's module cache where it has them), then runs an
// unrelated module's tests with it: no source of vmtest anywhere, no build
// of the guest agent.
func TestGoInstall(t *testing.T) {
	vmtestBin(t) // skips with -short
	const modPath, version = "github.com/skbstore/skbstore", "v0.0.0-20261125000000-000000000000"
	proxy := t.TempDir()
	vdir := filepath.Join(proxy, modPath, "@v")
	require.NoError(t, os.MkdirAll(vdir, 0o755))
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(vdir, version+".mod"), gomod, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(vdir, version+".info"), []byte(`{"Version":"`+version+`","Time":"2026-11-25T00:00:00Z"}`), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(vdir, "list"), []byte(version+"\n"), 0o644))
	zf, err := os.Create(filepath.Join(vdir, version+".zip"))
	require.NoError(t, err)
	root, err := filepath.Abs(repoRoot)
	require.NoError(t, err)
	require.NoError(t, modzip.CreateFromVCS(zf, module.Version{Path: modPath, Version: version}, root, "HEAD", ""))
	require.NoError(t, zf.Close())

	goEnv := func(k string) string {
		out, err := exec.Command("go", "env", k).Output()
		require.NoError(t, err)
		return strings.TrimSpace(string(out))
	}
	modCache, buildCache := goEnv("GOMODCACHE"), goEnv("GOCACHE")
	home, gopath, gobin := t.TempDir(), t.TempDir(), t.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !strings.HasPrefix(k, "GO") && !strings.HasPrefix(k, "VMTEST_") && k != "HOME" {
			env = append(env, kv)
		}
	}
	vmCache, err := cacheDir() // kernels are fetched by other tests
	require.NoError(t, err)
	env = append(env, "HOME="+home, "GOPATH="+gopath, "GOBIN="+gobin, "GOCACHE="+buildCache, "GOTOOLCHAIN=local",
		"GOFLAGS=-modcacherw -trimpath",
		// This checkout as a version, then what this machine's module
		// cache has, then the real proxy (which also serves the checksum
		// database every download is verified against).
		"GOPROXY=file://"+proxy+",file://"+filepath.Join(modCache, "cache", "download")+",https://proxy.golang.org",
		"GONOSUMDB="+modPath, "VMTEST_CACHE_DIR="+vmCache)
	install := exec.Command("go", "install", modPath+"/vmtest/cmd/vmtest@"+version)
	install.Dir, install.Env = home, env
	out, err := install.CombinedOutput()
	require.NoError(t, err, "go install: %s", out)
	bin := filepath.Join(gobin, "vmtest")

	mod := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module example.com/installed\n\ngo 1.24\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(mod, "x_test.go"), []byte(`package installed

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestInGuest(t *testing.T) {
	if os.Getenv("VMTEST_GUEST") != "1" {
		t.Fatal("not in a guest")
	}
	out, err := exec.Command("uname", "-r").Output()
	if err != nil || !strings.Contains(string(out), "6.1.") {
		t.Fatalf("uname -r: %q %v", out, err)
	}
}
`), 0o644))
	run := exec.Command(bin, "run", "-kernel", "6.1", "-results", t.TempDir(), "--", "go", "test", "./...")
	run.Dir, run.Env = mod, env
	out, err = run.CombinedOutput()
	t.Logf("%s", out)
	require.NoError(t, err)
	assert.NotContains(t, string(out), "building guest image (init", "no guest agent built from source")
	assert.Contains(t, string(out), "1 passed, 0 failed, 0 skipped")
}

// TestFuzzCorpusComesHome: go test -fuzz in the guest finds a failing input
// and writes it to the package's testdata/fuzz, as it would on the host; it
// comes back there (and only it: the seed corpus is not sent back).
func TestFuzzCorpusComesHome(t *testing.T) {
	bin := vmtestBin(t)
	mod := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module example.com/fuzzed\n\ngo 1.24\n"), 0o644))
	seedDir := filepath.Join(mod, "testdata", "fuzz", "FuzzOnlySeed")
	require.NoError(t, os.MkdirAll(seedDir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(seedDir, "seed1"), []byte("go test fuzz v1\nstring(\"seed\")\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(mod, "f_test.go"), []byte(`package fuzzed

import "testing"

// FuzzOnlySeed fails on anything but its seed: the first mutation fails.
func FuzzOnlySeed(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		if s != "seed" {
			t.Fatalf("not the seed: %q", s)
		}
	})
}
`), 0o644))
	gt := exec.Command("go", "test", "-exec", bin+" exec -kernel 6.1", "-run", "^$", "-fuzz", "^FuzzOnlySeed$", "-fuzztime", "60s", ".")
	gt.Dir = mod
	gt.Env = append(os.Environ(), "VMTEST_SRC="+mustAbs(t, repoRoot))
	out, err := gt.CombinedOutput()
	t.Logf("%s", out)
	require.Error(t, err, "the fuzz target fails")
	assert.Contains(t, string(out), "not the seed")
	ents, err := os.ReadDir(seedDir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	assert.Len(t, names, 2, "the seed and the failing input: %v", names)
	assert.Contains(t, string(out), "go test -run=FuzzOnlySeed/", "go test names the new input")
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	require.NoError(t, err)
	return a
}

// TestShell drives vmtest shell through a pseudo-terminal, as a person at a
// terminal would: the shell comes up in the guest, uname -r answers with the
// guest's release, Ctrl-C stops the guest's foreground command (not vmtest),
// and exit leaves the shell and powers the guest off; a command's status is
// vmtest's.
func TestShell(t *testing.T) {
	bin := vmtestBin(t)
	cmd := exec.Command(bin, "shell", "-kernel", "6.1", "-results", t.TempDir())
	cmd.Dir = repoRoot
	ptmx, snapshot, done := startOnPTY(t, cmd, true)
	waitFor := func(what string, from int, limit time.Duration) int {
		t.Helper()
		for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if s := snapshot(); len(s) > from {
				if i := strings.Index(s[from:], what); i >= 0 {
					return from + i + len(what)
				}
			}
		}
		t.Fatalf("%q did not come within %s", what, limit)
		return 0
	}
	// gosh's prompt: the guest's shell is ready for a line.
	const prompt = "$ "
	pos := waitFor(prompt, 0, 3*time.Minute)
	run := func(line, want string) {
		t.Helper()
		_, err := ptmx.Write([]byte(line + "\r"))
		require.NoError(t, err)
		pos = waitFor(want, pos, 30*time.Second)
		pos = waitFor(prompt, pos, 30*time.Second)
	}
	// Arithmetic, so that the echo of what was typed does not count.
	run("echo READY-$((40+2))", "READY-42")
	run("uname -r", "6.1.0-")
	// Ctrl-C while sleep runs (its echo on the screen says the shell
	// has the line; a second later, sleep runs).
	_, err := ptmx.Write([]byte("sleep 1000\r"))
	require.NoError(t, err)
	pos = waitFor("sleep 1000", pos, 30*time.Second)
	time.Sleep(2 * time.Second)
	_, err = ptmx.Write([]byte{3})
	require.NoError(t, err)
	pos = waitFor("^C", pos, 30*time.Second) // the guest terminal's echo of it
	require.NoError(t, cmd.Process.Signal(syscall.Signal(0)), "vmtest is still running")
	pos = waitFor(prompt, pos, 30*time.Second)
	run("echo AFTER-$((2+3))", "AFTER-5")
	_, err = ptmx.Write([]byte("exit\r"))
	require.NoError(t, err)
	select {
	case err := <-done:
		require.NoError(t, err, "the shell ended well")
	case <-time.After(time.Minute):
		t.Fatal("the guest did not power off after exit")
	}
	_, _, code := runVMTest(t, "shell", "-kernel", "6.1", "-results", t.TempDir(), "--", "false")
	assert.Equal(t, 1, code, "vmtest shell -- false exits with false's status")
}

// waitOnScreen waits until what appears on the terminal.
func waitOnScreen(t *testing.T, snapshot func() string, what string, limit time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if strings.Contains(snapshot(), what) {
			return
		}
	}
	t.Fatalf("%q did not come within %s", what, limit)
}

// startOnPTY starts cmd with a new pseudo-terminal as its controlling
// terminal and stdout and stderr (and stdin if withStdin), and returns the
// terminal's master, what has appeared on it so far, and cmd's end. The
// screen is logged and cmd killed when the test ends.
func startOnPTY(t *testing.T, cmd *exec.Cmd, withStdin bool) (*os.File, func() string, <-chan error) {
	t.Helper()
	ptmx, pts := openPTY(t)
	cmd.Stdout, cmd.Stderr = pts, pts
	ctty := 1
	if withStdin {
		cmd.Stdin, ctty = pts, 0
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: ctty}
	require.NoError(t, cmd.Start())
	pts.Close()
	var mu sync.Mutex
	var screen bytes.Buffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			mu.Lock()
			screen.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	snapshot := func() string {
		mu.Lock()
		defer mu.Unlock()
		return screen.String()
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
		t.Logf("terminal:\n%s", snapshot())
	})
	return ptmx, snapshot, done
}

// openPTY opens a pseudo-terminal pair.
func openPTY(t *testing.T) (ptmx, pts *os.File) {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	require.NoError(t, err)
	t.Cleanup(func() { ptmx.Close() })
	require.NoError(t, unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0))
	n, err := unix.IoctlGetUint32(int(ptmx.Fd()), unix.TIOCGPTN)
	require.NoError(t, err)
	pts, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	require.NoError(t, err)
	require.NoError(t, unix.IoctlSetWinsize(int(pts.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 120}))
	return ptmx, pts
}

// TestGDBStub: with -gdb the guest waits at its first instruction for a
// debugger; speaking gdb's remote protocol over TCP (as gdb would), the test
// finds the CPU stopped at the x86 reset vector, reads the registers, lets
// it continue, and the guest runs its command to the end.
func TestGDBStub(t *testing.T) {
	bin := vmtestBin(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close() // QEMU listens there
	cmd := exec.Command(bin, "exec", "-kernel", "6.1", "-gdb", addr, "-results", t.TempDir(), "/bin/true")
	cmd.Dir = repoRoot
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
		t.Logf("stderr:\n%s", stderr.String())
	}()
	var conn net.Conn
	for i := 0; ; i++ {
		if conn, err = net.Dial("tcp", addr); err == nil {
			break
		}
		require.Less(t, i, 600, "QEMU's gdb stub never listened on %s", addr)
		time.Sleep(200 * time.Millisecond)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	// packet sends one command and returns the reply's payload.
	packet := func(cmd string) string {
		t.Helper()
		var sum byte
		for i := 0; i < len(cmd); i++ {
			sum += cmd[i]
		}
		_, err := fmt.Fprintf(conn, "$%s#%02x", cmd, sum)
		require.NoError(t, err)
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
		for {
			c, err := r.ReadByte()
			require.NoError(t, err)
			if c == '$' {
				break // '+' acknowledges; the reply starts at '$'
			}
		}
		payload, err := r.ReadString('#')
		require.NoError(t, err)
		_, err = io.ReadFull(r, make([]byte, 2)) // checksum
		require.NoError(t, err)
		_, err = conn.Write([]byte("+"))
		require.NoError(t, err)
		return strings.TrimSuffix(payload, "#")
	}
	stop := packet("?")
	assert.True(t, strings.HasPrefix(stop, "T05") || strings.HasPrefix(stop, "S05"), "stopped (SIGTRAP): %q", stop)
	regs := packet("g")
	require.Greater(t, len(regs), 17*16, "x86-64 registers: %q", regs)
	rip, err := hex.DecodeString(regs[16*16 : 17*16]) // rax..r15, then rip, little-endian
	require.NoError(t, err)
	assert.Equal(t, uint64(0xfff0), binary.LittleEndian.Uint64(rip), "the CPU waits at the reset vector")
	_, err = fmt.Fprintf(conn, "$c#63") // continue: no reply until it stops again
	require.NoError(t, err)
	select {
	case err := <-done:
		require.NoError(t, err, "the guest ran /bin/true once continued")
	case <-time.After(3 * time.Minute):
		t.Fatal("the guest did not finish after continue")
	}
	assert.Contains(t, stderr.String(), "gdb -ex 'target remote "+addr+"'")
}

// TestShellOnFail: with -shell-on-fail a failing test binary leaves the
// guest up with a shell on the controlling terminal (stdin is /dev/null, as
// go test gives -exec programs), in the test's directory and environment;
// leaving it powers the guest off and the failure is still reported. Without
// a terminal the flag is ignored with a note.
func TestShellOnFail(t *testing.T) {
	bin := vmtestBin(t)
	testBin := filepath.Join(t.TempDir(), "sample.test")
	build := exec.Command("go", "test", "-c", "-o", testBin, "./vmtest/testdata/sample")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	pkgDir := mustAbs(t, filepath.Join(repoRoot, "vmtest", "testdata", "sample"))

	cmd := exec.Command(bin, "exec", "-kernel", "6.1", "-shell-on-fail", "-results", t.TempDir(), testBin, "-test.run", "^TestFailOnPurpose$")
	cmd.Dir = pkgDir
	ptmx, snapshot, done := startOnPTY(t, cmd, false) // stdin: /dev/null, as go test gives
	waitFor := func(what string, limit time.Duration) { t.Helper(); waitOnScreen(t, snapshot, what, limit) }
	waitFor("a shell in "+pkgDir, 3*time.Minute)
	waitFor("$ ", 30*time.Second)
	_, err = ptmx.Write([]byte("pwd; echo GUEST-$VMTEST_GUEST\r"))
	require.NoError(t, err)
	waitFor(pkgDir+"\r", 30*time.Second)
	waitFor("GUEST-1", 30*time.Second)
	_, err = ptmx.Write([]byte("exit\r"))
	require.NoError(t, err)
	select {
	case err := <-done:
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "the test's failure is still vmtest's")
		assert.Equal(t, 1, ee.ExitCode())
	case <-time.After(time.Minute):
		t.Fatal("the guest did not power off after the shell")
	}

	// No terminal (as in CI): the flag is ignored, with a note.
	noTTY := exec.Command(bin, "exec", "-kernel", "6.1", "-shell-on-fail", "-results", t.TempDir(), testBin, "-test.run", "^TestFailOnPurpose$")
	noTTY.Dir = pkgDir
	noTTY.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // no controlling terminal
	out, err = noTTY.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "-shell-on-fail ignored")
	assert.Contains(t, string(out), "this test fails on purpose")
}

// TestGDBSymbols: `vmtest kernels -fetch 6.1 -debug` fetches the vmlinux of
// Debian's -dbg package, -gdb names it in the gdb command, and real gdb
// with it stops the guest at kernel_init and reads the kernel's command
// line from guest memory: the symbols are those of the running kernel.
func TestGDBSymbols(t *testing.T) {
	gdb, err := exec.LookPath("gdb")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("gdb is not installed (.ci/run installs it)")
		}
		t.Skip("needs gdb")
	}
	bin := vmtestBin(t)
	out, err := exec.Command(bin, "kernels", "-fetch", "6.1", "-debug").CombinedOutput()
	require.NoError(t, err, "%s", out)
	m := regexp.MustCompile(`(?m)^6\.1: vmlinux (\S+)$`).FindSubmatch(out)
	require.NotNil(t, m, "%s", out)
	vmlinux := string(m[1])

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "exec", "-kernel", "6.1", "-gdb", addr, "-results", t.TempDir(), "/bin/true")
	cmd.Dir = repoRoot
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
		t.Logf("stderr:\n%s", stderr.String())
	}()
	hint := "gdb -ex 'target remote " + addr + "' " + vmlinux
	for deadline := time.Now().Add(3 * time.Minute); !strings.Contains(stderr.String(), hint); time.Sleep(100 * time.Millisecond) {
		require.True(t, time.Now().Before(deadline), "no gdb command naming the vmlinux")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	g := exec.CommandContext(ctx, gdb, "-batch", "-nx", "-ex", "target remote "+addr, "-ex", "hbreak kernel_init", "-ex", "continue",
		"-ex", "print saved_command_line", "-ex", "print init_uts_ns.name.release", "-ex", "delete", "-ex", "detach", vmlinux)
	gout, err := g.CombinedOutput()
	require.NoError(t, err, "%s", gout)
	assert.Contains(t, string(gout), "Breakpoint 1, kernel_init")
	assert.Regexp(t, `\$1 = 0x[0-9a-f]+ "console=ttyS0.* nokaslr`, string(gout), "the command line, read from the guest's memory")
	assert.Contains(t, string(gout), `$2 = "6.1.0-`)
	select {
	case err := <-done:
		require.NoError(t, err, "the guest ran /bin/true once gdb detached")
	case <-time.After(3 * time.Minute):
		t.Fatal("the guest did not finish after gdb detached")
	}
}

// lockedBuffer is a bytes.Buffer a process writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRunShellOnFail: vmtest run -shell-on-fail, from a terminal, gives a
// shell in the guest of the failing package, in its directory; leaving it
// finishes the run, which still reports the failure.
func TestRunShellOnFail(t *testing.T) {
	bin := vmtestBin(t)
	pkgDir := mustAbs(t, filepath.Join(repoRoot, "vmtest", "testdata", "sample"))
	cmd := exec.Command(bin, "run", "-kernel", "6.1", "-shell-on-fail", "-results", t.TempDir(), "--",
		"go", "test", "-run", "^TestFailOnPurpose$", "./vmtest/testdata/sample")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	ptmx, snapshot, done := startOnPTY(t, cmd, true)
	waitFor := func(what string, limit time.Duration) { t.Helper(); waitOnScreen(t, snapshot, what, limit) }
	waitFor("a shell in "+pkgDir, 5*time.Minute)
	waitFor("$ ", 30*time.Second)
	_, err := ptmx.Write([]byte("echo IN-$VMTEST_GUEST-$(pwd)\r"))
	require.NoError(t, err)
	waitFor("IN-1-"+pkgDir, 30*time.Second)
	_, err = ptmx.Write([]byte("exit\r"))
	require.NoError(t, err)
	select {
	case err := <-done:
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "the failure is still the run's")
		assert.Equal(t, 1, ee.ExitCode())
	case <-time.After(2 * time.Minute):
		t.Fatal("the run did not end after the shell")
	}
	assert.Regexp(t, `0 passed, 1 failed`, snapshot())
}

// TestHostBpftool: u-root has no bpftool, but the host's, shared with
// -share, runs in the guest with its C libraries (libelf, libz, libcap).
func TestHostBpftool(t *testing.T) {
	bpftool, err := exec.LookPath("bpftool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("bpftool is not installed (.ci/run installs it)")
		}
		t.Skip("needs the host's bpftool")
	}
	stdout, _, code := runVMTest(t, "shell", "-kernel", "6.1", "-results", t.TempDir(), "-share", bpftool, "--",
		"bpftool", "feature", "probe", "kernel")
	require.Equal(t, 0, code)
	assert.Contains(t, stdout, "bpf() syscall is available")
	assert.Contains(t, stdout, "eBPF program_type xdp is available")
}

// TestOCISelftestsKernel: Debian's 6.1, pushed to a registry in this
// process as cilium/ci-kernels lays out a -selftests image (usr/lib/modules,
// lib -> usr/lib, the selftests' objects), is booted by its tag and by its
// digest through VMTEST_OCI_REPO; the guest finds the objects where
// CI_KERNEL_SELFTESTS says, as cilium/ebpf's tests look for them.
func TestOCISelftestsKernel(t *testing.T) {
	bin := vmtestBin(t)
	out, err := exec.Command(bin, "kernels", "-fetch", "6.1").Output()
	require.NoError(t, err)
	f := strings.Fields(string(out))
	require.Len(t, f, 3, "%s", out)
	release, image := f[1], f[2]

	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	add := func(name string, typ byte, data []byte, link string) {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: name, Typeflag: typ, Mode: 0o644, Size: int64(len(data)), Linkname: link}))
		_, err := tw.Write(data)
		require.NoError(t, err)
	}
	img, err := os.ReadFile(image)
	require.NoError(t, err)
	add("boot/vmlinuz", tar.TypeReg, img, "")
	modDir := filepath.Join(filepath.Dir(image), "lib", "modules", release)
	for _, rel := range []string{"modules.dep", "modules.alias", "modules.builtin"} {
		b, err := os.ReadFile(filepath.Join(modDir, rel))
		require.NoError(t, err)
		add(filepath.Join("usr/lib/modules", release, rel), tar.TypeReg, b, "")
	}
	add("lib", tar.TypeSymlink, nil, "usr/lib")
	add("usr/src/linux/tools/testing/selftests/bpf/test_progs.bpf.o", tar.TypeReg, []byte("SELFTEST-OBJECT"), "")
	require.NoError(t, tw.Close())
	data := layer.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	require.NoError(t, err)
	oci, err := mutate.AppendLayers(empty.Image, l)
	require.NoError(t, err)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	repo := strings.TrimPrefix(srv.URL, "http://") + "/cilium/ci-kernels"
	ref, err := name.NewTag(repo + ":6.6-selftests")
	require.NoError(t, err)
	require.NoError(t, remote.Write(ref, oci))
	digest, err := oci.Digest()
	require.NoError(t, err)

	for _, kernel := range []string{"6.6-selftests", "6.6-selftests@" + digest.String()} {
		t.Run(kernel, func(t *testing.T) {
			cmd := exec.Command(bin, "shell", "-kernel", kernel, "-results", t.TempDir(), "--",
				"gosh", "-c", `echo "at $CI_KERNEL_SELFTESTS"; cat "$CI_KERNEL_SELFTESTS/test_progs.bpf.o"; echo; uname -r`)
			cmd.Env = append(os.Environ(), "VMTEST_OCI_REPO="+repo)
			var o, e bytes.Buffer
			cmd.Stdout, cmd.Stderr = &o, &e
			err := cmd.Run()
			t.Logf("stdout:\n%s\nstderr:\n%s", o.String(), e.String())
			require.NoError(t, err)
			assert.Contains(t, o.String(), "SELFTEST-OBJECT")
			assert.Contains(t, o.String(), "/oci-"+digest.Hex+"/selftests-bpf")
			assert.Contains(t, o.String(), release)
		})
	}
}
