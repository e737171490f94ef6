package vmtest_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/skbstore/skbstore/vmtest"
)

// hostileAttack is one attack of the hostile package and what its run must
// show.
type hostileAttack struct {
	attack string
	run    string
	limits vmtest.Limits
	check  func(t *testing.T, res *vmtest.Result, target string)
}

// hostileAttacks are the attacks of the hostile package, each failing its
// run with a message that names the cause.
var hostileAttacks = []hostileAttack{{
	attack: "forge-pass", run: "^TestFailThenForge$",
	check: func(t *testing.T, res *vmtest.Result, _ string) {
		require.NotNil(t, res.Commands[0].Exit)
		assert.Equal(t, 1, res.Commands[0].Exit.Code, "the real exit status, not the forged one")
		assert.Nil(t, res.Failure, "the agent's own frames were read to the end")
		assert.ErrorContains(t, res.Err(), "failed authentication")
	},
}, {
	attack: "escape", run: "^(TestEscape|TestKeyAndPortHidden)$",
	check: func(t *testing.T, res *vmtest.Result, target string) {
		for _, p := range []string{target, target + ".out"} {
			assert.NoFileExists(t, p, "a frame name reached the host file system")
		}
		require.NotNil(t, res.Commands[0].Exit)
		assert.Equal(t, 0, res.Commands[0].Exit.Code, "TestKeyAndPortHidden: the key and the port are out of the tests' reach:\n%s", output(t, res, 0))
		assert.ErrorContains(t, res.Err(), "failed authentication")
	},
}, {
	attack: "flood-names", run: "^TestFloodNames$",
	check: func(t *testing.T, res *vmtest.Result, _ string) {
		n := 0
		_ = filepath.WalkDir(res.OutDir, func(string, fs.DirEntry, error) error { n++; return nil })
		assert.Less(t, n, 20, "files in the results directory")
		assert.Len(t, res.Commands, 1)
		assert.LessOrEqual(t, len(res.ProtocolErrors), 102)
		assert.ErrorContains(t, res.Err(), "not the agent's frames")
	},
}, {
	attack: "big-output", run: "^TestBigOutput$", limits: vmtest.Limits{OutputBytes: 256 << 10},
	check: func(t *testing.T, res *vmtest.Result, _ string) {
		assert.LessOrEqual(t, res.Commands[0].OutputBytes, int64(256<<10))
		assert.ErrorContains(t, res.Err(), vmtest.FlagMaxOutput)
	},
}, {
	attack: "big-artifact", run: "^TestBigArtifact$",
	check: func(t *testing.T, res *vmtest.Result, _ string) {
		assert.Nil(t, res.Failure, "the agent survived the artifact")
		require.NotNil(t, res.Commands[0].Exit)
		assert.Equal(t, 0, res.Commands[0].Exit.Code)
		assert.Contains(t, string(output(t, res, 0)), "--- PASS: TestBigArtifact", "the test's PASS is kept")
		assert.NoFileExists(t, filepath.Join(res.OutDir, "artifacts", "hostile", "huge.bin"))
		assert.FileExists(t, filepath.Join(res.OutDir, "artifacts", "hostile", "small.txt"))
		assert.ErrorContains(t, res.Err(), vmtest.FlagMaxArtifacts)
	},
}, {
	attack: "exit0", run: "^TestFailsButExits0$",
	check: func(t *testing.T, res *vmtest.Result, _ string) {
		require.NotNil(t, res.Commands[0].Exit)
		assert.Equal(t, 0, res.Commands[0].Exit.Code)
		assert.True(t, strings.HasPrefix(res.Commands[0].FailLine, "--- FAIL: TestFailsButExits0 ("), "fail line %q", res.Commands[0].FailLine)
		assert.ErrorContains(t, res.Err(), "exit status 0, but its output reports a failure")
	},
}, {
	// A test that ends the machine through QEMU's exit device, as the
	// agent does once everything is sent, must not pass for done.
	attack: "early-exit", run: "^TestKeyAndPortHidden$",
	check: func(t *testing.T, res *vmtest.Result, _ string) {
		require.NotNil(t, res.Failure)
		assert.Equal(t, vmtest.FailNoReport, res.Failure.Kind)
		assert.ErrorContains(t, res.Err(), "guest stopped without reporting")
	},
}}

// TestHostileGuest boots the hostile package with one attack at a time. In
// every case the run must fail with a message that names the cause, and
// nothing may land outside the results directory.
func TestHostileGuest(t *testing.T) {
	t.Parallel()
	e := setup(t)
	for _, tt := range hostileAttacks {
		t.Run(tt.attack, func(t *testing.T) {
			t.Parallel()
			sandbox := t.TempDir()
			out := filepath.Join(sandbox, "results", "run", "kernel", "pkg")
			target := filepath.Join(sandbox, "escaped")
			res, err := vmtest.Run(context.Background(), vmtest.Options{
				Kernel: e.kernel.Image, BaseImage: e.base, OutDir: out, Timeout: 3 * time.Minute, Limits: tt.limits,
				Commands: []vmtest.Command{{ID: "hostile", Binary: e.hostile, Args: []string{"-test.v", "-test.run", tt.run, "-attack", tt.attack}}},
				Env:      []string{"HOSTILE_TARGET=" + target},
			})
			require.NoError(t, err)
			t.Logf("verdict: %v", res.Err())
			tt.check(t, res, target)
			assert.Empty(t, vmtest.FilesOutside(t, sandbox, out), "files outside the results directory")
		})
	}
}

// TestHostileSession runs the attacks in guests that serve one command after
// another (vmtest run -boot per-kernel), each attack followed by a clean
// package: every attack's run fails as in a guest of its own, and the
// package after it passes, in the same guest when the attack left it up
// (caps are per command) and in a fresh one when it did not (an attack
// whose frames failed authentication ends the guest: nothing from it is
// trusted any more). Nothing lands outside the results directory.
func TestHostileSession(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	sandbox := t.TempDir()
	results := filepath.Join(sandbox, "results")
	target := filepath.Join(sandbox, "escaped")
	var s *vmtest.Session
	boots := 0
	session := func() *vmtest.Session {
		if s != nil && s.Alive() {
			return s
		}
		if s != nil {
			s.Close()
		}
		boots++
		var err error
		s, err = vmtest.StartSession(ctx, vmtest.Options{Kernel: e.kernel.Image, BaseImage: e.base,
			OutDir: filepath.Join(results, fmt.Sprintf(".boot-%d", boots)), Timeout: 3 * time.Minute,
			Limits: vmtest.Limits{OutputBytes: 256 << 10}})
		require.NoError(t, err)
		return s
	}
	defer func() { s.Close() }()
	for _, tt := range hostileAttacks {
		res, err := session().Run(ctx, vmtest.SessionCommand{
			Command: vmtest.Command{ID: "hostile", Binary: e.hostile, Args: []string{"-test.v", "-test.run", tt.run, "-attack", tt.attack}},
			Env:     []string{"HOSTILE_TARGET=" + target},
			OutDir:  filepath.Join(results, tt.attack),
		})
		require.NoError(t, err, tt.attack)
		t.Logf("%s: %v", tt.attack, res.Err())
		t.Run(tt.attack, func(t *testing.T) { tt.check(t, res, target) })
		alive := s.Alive()
		next, err := session().Run(ctx, vmtest.SessionCommand{
			Command: vmtest.Command{ID: "sample", Binary: e.sample, Args: []string{"-test.v", "-test.run", "^(TestPass|TestNoStrays)$"}},
			OutDir:  filepath.Join(results, tt.attack+"-next"),
		})
		require.NoError(t, err)
		assert.NoError(t, next.Err(), "the package after %s (same guest: %v)", tt.attack, alive)
	}
	assert.Greater(t, boots, 1, "the attacks that break trust end their guest")
	assert.Empty(t, vmtest.FilesOutside(t, sandbox, results), "files outside the results directory")
}

// TestModuleThatDoesNotLoadFails gives the guest a module file that is no
// module: the run fails and says which.
func TestModuleThatDoesNotLoadFails(t *testing.T) {
	t.Parallel()
	e := setup(t)
	bogus := filepath.Join(t.TempDir(), "bogus.ko")
	require.NoError(t, os.WriteFile(bogus, []byte("not an ELF module"), 0o644))
	res, err := vmtest.Run(context.Background(), vmtest.Options{
		Kernel: e.kernel.Image, BaseImage: e.base, OutDir: t.TempDir(), Timeout: 2 * time.Minute,
		Commands: []vmtest.Command{{ID: "sample", Binary: e.sample, Args: []string{"-test.run", "^TestPass$"}}},
		Modules:  []vmtest.Module{{Name: "bogus", Host: bogus, Guest: "/lib/modules/bogus.ko"}},
	})
	require.NoError(t, err)
	require.NotNil(t, res.Commands[0].Exit)
	assert.Equal(t, 0, res.Commands[0].Exit.Code, "the test itself passes")
	assert.ErrorContains(t, res.Err(), "load module bogus.ko")
}

// TestBadKernelImage boots what is not a whole kernel: a truncated bzImage is
// refused before QEMU starts, and one whose body is damaged (it halts before
// printing) fails soon with a message that says the kernel never started.
func TestBadKernelImage(t *testing.T) {
	t.Parallel()
	e := setup(t)
	good, err := os.ReadFile(e.kernel.Image)
	require.NoError(t, err)
	dir := t.TempDir()

	truncated := filepath.Join(dir, "truncated")
	require.NoError(t, os.WriteFile(truncated, good[:len(good)/2], 0o644))
	_, err = vmtest.Run(context.Background(), vmtest.Options{Kernel: truncated, BaseImage: e.base, OutDir: t.TempDir()})
	assert.ErrorContains(t, err, "is truncated")

	notKernel := filepath.Join(dir, "vmlinux")
	require.NoError(t, os.WriteFile(notKernel, []byte("\x7fELF not a bzImage"+strings.Repeat("\x00", 4096)), 0o644))
	_, err = vmtest.Run(context.Background(), vmtest.Options{Kernel: notKernel, BaseImage: e.base, OutDir: t.TempDir()})
	assert.ErrorContains(t, err, "is not a bootable kernel image (neither an x86 bzImage nor an arm64 Image): it is an ELF file (vmlinux?)")

	damaged := filepath.Join(dir, "damaged")
	bad := append([]byte(nil), good...)
	clear(bad[len(bad)/2 : len(bad)/2+1<<20])
	require.NoError(t, os.WriteFile(damaged, bad, 0o644))
	start := time.Now()
	res, err := vmtest.Run(context.Background(), vmtest.Options{
		Kernel: damaged, BaseImage: e.base, OutDir: t.TempDir(), KernelStartTimeout: 20 * time.Second,
		Commands: []vmtest.Command{{ID: "sample", Binary: e.sample}},
	})
	require.NoError(t, err)
	require.NotNil(t, res.Failure)
	assert.Equal(t, vmtest.FailNoKernel, res.Failure.Kind)
	assert.Contains(t, res.Failure.Message, "printed nothing")
	assert.Less(t, time.Since(start), time.Minute)
}
