package vmtest_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/skbstore/skbstore/images"
	"github.com/skbstore/skbstore/kernels"
	"github.com/skbstore/skbstore/vmtest"
	"github.com/skbstore/skbstore/vmtest/gotest"
)

// env is what the boot tests share: a real kernel, the base image and the
// sample guest test binary, prepared once.
type env struct {
	kernel  *kernels.Kernel
	base    string
	sample  string
	hostile string // testdata/hostile, the guest package that attacks the runner
}

var (
	envOnce sync.Once
	theEnv  *env
	envErr  error
)

func setup(t *testing.T) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a real kernel under QEMU; skipped with -short")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil && os.Getenv("VMTEST_QEMU") == "" {
		t.Fatal("qemu-system-x86_64 is not installed (Debian/Ubuntu: apt-get install qemu-system-x86); these tests boot real kernels")
	}
	envOnce.Do(func() {
		ctx := context.Background()
		cache, err := kernels.NewCache()
		if err != nil {
			envErr = err
			return
		}
		cache.Progress = os.Stderr
		k, err := cache.Get(ctx, "6.1")
		if err != nil {
			envErr = err
			return
		}
		base, err := images.Base(ctx, images.BaseOptions{CacheDir: filepath.Join(cache.Dir, "images"), Progress: os.Stderr})
		if err != nil {
			envErr = err
			return
		}
		dir, err := os.MkdirTemp("", "vmtest-sample-")
		if err != nil {
			envErr = err
			return
		}
		bins := map[string]string{}
		for _, pkg := range []string{"sample", "hostile"} {
			bins[pkg] = filepath.Join(dir, pkg+".test")
			cmd := exec.Command("go", "test", "-c", "-o", bins[pkg], "./testdata/"+pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				envErr = fmt.Errorf("build testdata/%s: %w: %s", pkg, err, out)
				return
			}
		}
		theEnv = &env{kernel: k, base: base, sample: bins["sample"], hostile: bins["hostile"]}
	})
	require.NoError(t, envErr)
	return theEnv
}

func (e *env) run(t *testing.T, timeout time.Duration, args ...string) *vmtest.Result {
	t.Helper()
	out := t.TempDir()
	res, err := vmtest.Run(context.Background(), vmtest.Options{
		Kernel:    e.kernel.Image,
		BaseImage: e.base,
		Commands:  []vmtest.Command{{ID: "sample", Binary: e.sample, Args: args}},
		OutDir:    out,
		Timeout:   timeout,
	})
	require.NoError(t, err)
	t.Logf("accel %s, boot %v, total %v", res.Accel, res.Boot, res.Duration)
	return res
}

// events converts test2json-framed output with the real go tool test2json.
func events(t *testing.T, output []byte) *gotest.Summary {
	t.Helper()
	cmd := exec.Command("go", "tool", "test2json", "-p", "sample")
	cmd.Stdin = bytes.NewReader(output)
	out, err := cmd.Output()
	require.NoError(t, err)
	var r gotest.Reader
	sum, err := r.Read(bytes.NewReader(out))
	require.NoError(t, err)
	return sum
}

func TestRunReportsEachTest(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res := e.run(t, 2*time.Minute, "-test.v=test2json", "-test.run", "^(TestPass|TestFailOnPurpose|TestSkip)$")

	require.Nil(t, res.Failure, "guest failure")
	assert.Empty(t, res.Splats)
	assert.Empty(t, res.ProtocolErrors)
	assert.True(t, strings.HasPrefix(res.Release, "6.1."), "release %q", res.Release)
	assert.Equal(t, e.kernel.Release, res.Release)
	require.Len(t, res.Commands, 1)
	require.NotNil(t, res.Commands[0].Exit, "exit never reported")
	assert.Equal(t, 1, res.Commands[0].Exit.Code, "a failing test must make the binary exit 1")
	assert.Error(t, res.Err())

	sum := events(t, output(t, res, 0))
	require.Len(t, sum.Packages, 1)
	got := map[string]string{}
	for _, tt := range sum.Packages[0].Tests {
		got[tt.Name] = tt.Outcome
	}
	assert.Equal(t, map[string]string{"TestPass": "pass", "TestFailOnPurpose": "fail", "TestSkip": "skip"}, got)
	passed, failed, skipped := sum.Counts()
	assert.Equal(t, []int{1, 1, 1}, []int{passed, failed, skipped})

	// The artifact the test wrote came back, and logs were kept.
	b, err := os.ReadFile(filepath.Join(res.OutDir, "artifacts", "sample", "uname.txt"))
	require.NoError(t, err)
	assert.Equal(t, res.Release, string(b))
	for _, f := range []string{"console.log", "dmesg.log", "sample.out", "result.json"} {
		assert.FileExists(t, filepath.Join(res.OutDir, f))
	}
	dmesg, _ := os.ReadFile(filepath.Join(res.OutDir, "dmesg.log"))
	assert.Contains(t, string(dmesg), "Linux version 6.1.")
}

func TestRunPassingBinaryPasses(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res := e.run(t, 2*time.Minute, "-test.run", "^TestPass$")
	assert.NoError(t, res.Err())
	require.NotNil(t, res.Commands[0].Exit)
	assert.Equal(t, 0, res.Commands[0].Exit.Code)
	assert.Contains(t, string(output(t, res, 0)), "PASS")
}

func TestKernelPanicIsAFailure(t *testing.T) {
	t.Parallel()
	e := setup(t)
	start := time.Now()
	res := e.run(t, 2*time.Minute, "-test.run", "^TestPanicKernel$")
	require.NotNil(t, res.Failure)
	assert.Equal(t, vmtest.FailPanic, res.Failure.Kind)
	assert.Contains(t, res.Failure.Message, "sysrq triggered crash")
	assert.NotEmpty(t, res.Failure.Console)
	assert.Nil(t, res.Commands[0].Exit, "the command cannot have finished")
	assert.Error(t, res.Err())
	// panic=-1 and -no-reboot make QEMU exit at once, not at the timeout.
	assert.Less(t, time.Since(start), time.Minute)
}

func TestHangIsAFailure(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const timeout = 30 * time.Second
	start := time.Now()
	res := e.run(t, timeout, "-test.run", "^TestHang$", "-test.timeout", "0")
	elapsed := time.Since(start)
	require.NotNil(t, res.Failure)
	assert.Equal(t, vmtest.FailTimeout, res.Failure.Kind)
	assert.Contains(t, res.Failure.Message, "while running sample")
	assert.NotEmpty(t, res.Failure.Console)
	assert.Error(t, res.Err())
	assert.GreaterOrEqual(t, elapsed, timeout)
	assert.Less(t, elapsed, timeout+30*time.Second, "the timeout must stop the guest")
	assertNoQEMULeft(t, res.OutDir)
}

func TestSplatFailsPassingTests(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res := e.run(t, 2*time.Minute, "-test.run", "^TestWarn$")
	require.Nil(t, res.Failure)
	require.NotNil(t, res.Commands[0].Exit)
	assert.Equal(t, 0, res.Commands[0].Exit.Code, "the test itself passes")
	require.Len(t, res.Splats, 1)
	assert.Equal(t, "WARNING", res.Splats[0].Kind)
	assert.Contains(t, res.Splats[0].Line, "deliberate splat")
	assert.ErrorContains(t, res.Err(), "kernel WARNING")
}

// assertNoQEMULeft checks that no QEMU process still uses the run's image.
func assertNoQEMULeft(t *testing.T, outDir string) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(outDir)) {
			t.Errorf("process %s still runs: %q", p, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

// TestAgentReapsOrphans runs a command that leaves exited grandchildren
// behind, then one that fails on any zombie: the agent as PID 1 must have
// reaped them between the two.
func TestAgentReapsOrphans(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res, err := vmtest.Run(context.Background(), vmtest.Options{
		Kernel: e.kernel.Image, BaseImage: e.base, OutDir: t.TempDir(), Timeout: 2 * time.Minute,
		Commands: []vmtest.Command{
			{ID: "orphans", Binary: e.sample, Args: []string{"-test.v", "-test.run", "^TestMakeOrphans$"}},
			{ID: "zombies", Binary: e.sample, Args: []string{"-test.v", "-test.run", "^TestNoZombies$"}},
		},
	})
	require.NoError(t, err)
	require.Len(t, res.Commands, 2)
	assert.Contains(t, string(output(t, res, 0)), "--- PASS: TestMakeOrphans")
	assert.Contains(t, string(output(t, res, 1)), "--- PASS: TestNoZombies", "%s", output(t, res, 1))
	assert.NoError(t, res.Err())
}

// TestGuestSetup checks the guest the agent sets up as PID 1 (the default)
// and with u-root's init in front of it, and that the kernel log streamed by
// the agent reaches the host whole: from the kernel's first line to a record
// the test writes just before the end.
func TestGuestSetup(t *testing.T) {
	t.Parallel()
	e := setup(t)
	cache, err := kernels.NewCache()
	require.NoError(t, err)
	for _, init := range []string{images.InitAgent, images.InitURoot} {
		t.Run(init, func(t *testing.T) {
			base, err := images.Base(context.Background(), images.BaseOptions{CacheDir: filepath.Join(cache.Dir, "images"), Init: init})
			require.NoError(t, err)
			if init == images.InitAgent {
				assert.Equal(t, e.base, base, "the agent is the default init")
			}
			res, err := vmtest.Run(context.Background(), vmtest.Options{
				Kernel: e.kernel.Image, BaseImage: base, OutDir: t.TempDir(), Timeout: 2 * time.Minute,
				Commands: []vmtest.Command{{ID: "sample", Binary: e.sample, Args: []string{"-test.v", "-test.run", "^(TestPass|TestGuestSetup|TestCommands)$"}}},
			})
			require.NoError(t, err)
			require.NoError(t, res.Err(), "output:\n%s\nagent log: %v", output(t, res, 0), res.Log)
			assert.Contains(t, string(output(t, res, 0)), "--- PASS: TestGuestSetup")
			assert.Contains(t, string(output(t, res, 0)), "--- PASS: TestCommands")
			assert.Empty(t, res.Log, "the agent reported problems setting up the guest")
			b, err := os.ReadFile(filepath.Join(res.OutDir, "artifacts", "sample", "uname.txt"))
			require.NoError(t, err)
			assert.Equal(t, res.Release, string(b))
			dmesg, err := os.ReadFile(filepath.Join(res.OutDir, "dmesg.log"))
			require.NoError(t, err)
			assert.True(t, strings.HasPrefix(string(dmesg), "[    0.000000] Linux version "), "dmesg.log starts with %.80q", dmesg)
			assert.Contains(t, string(dmesg), "] vmtest-sample: last kmsg record\n")
			assert.Equal(t, 1, strings.Count(string(dmesg), "Linux version "), "each record once")
			assert.Greater(t, res.Kernel.Init, 0.0, "kernel time of /init read from the console")
			assert.Greater(t, res.Kernel.UserSpace(), 0.0)
		})
	}
}

// output returns what the i-th command of res printed.
func output(t *testing.T, res *vmtest.Result, i int) []byte {
	t.Helper()
	b, err := res.ReadOutput(res.Commands[i].ID)
	require.NoError(t, err)
	return b
}

// TestTextPatchingWithTwoCPUs: a guest kernel that patches its own text while
// its other vCPU runs must survive under software emulation (the runner's
// choice of TCG settings; see accel.go).
func TestTextPatchingWithTwoCPUs(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res, err := vmtest.Run(context.Background(), vmtest.Options{
		Kernel: e.kernel.Image, BaseImage: e.base, OutDir: t.TempDir(), Timeout: 90 * time.Second, CPUs: 2,
		Commands: []vmtest.Command{{ID: "sample", Binary: e.sample, Args: []string{"-test.v", "-test.run", "^TestToggleTracepoints$"}}},
	})
	require.NoError(t, err)
	assert.NoError(t, res.Err())
	assert.Contains(t, string(output(t, res, 0)), "--- PASS: TestToggleTracepoints")
}
