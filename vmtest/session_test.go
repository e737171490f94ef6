package vmtest_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/skbstore/skbstore/vmtest"
)

// TestSession boots one guest and runs the sample binary in it four times,
// as vmtest run -boot per-kernel does with the packages of a run: each
// command has its own output, artifacts, environment and results directory
// and the same boot; a daemon the first leaves behind is gone when the
// second runs; a kernel report (WARNING) fails the command that caused it;
// a failing command leaves the session up; a kernel panic
// fails the command that caused it and ends the session.
func TestSession(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	dir := t.TempDir()
	s, err := vmtest.StartSession(ctx, vmtest.Options{Kernel: e.kernel.Image, BaseImage: e.base,
		OutDir: filepath.Join(dir, "boot"), Timeout: 2 * time.Minute, CPUs: 2})
	require.NoError(t, err)
	defer s.Close()
	run := func(id, mark string, args ...string) *vmtest.Result {
		t.Helper()
		res, err := s.Run(ctx, vmtest.SessionCommand{
			Command: vmtest.Command{ID: id, Binary: e.sample, Args: append([]string{"-test.v"}, args...), Dir: "/tmp/" + id},
			Env:     []string{"SAMPLE_MARK=" + mark},
			OutDir:  filepath.Join(dir, id),
		})
		require.NoError(t, err)
		out, err := res.ReadOutput(id)
		require.NoError(t, err)
		t.Logf("%s: boot %v, duration %v\n%s", id, res.Boot, res.Duration, out)
		return res
	}
	bootID := func(res *vmtest.Result, id string) string {
		b, err := os.ReadFile(filepath.Join(res.OutDir, "artifacts", id, "boot_id"))
		require.NoError(t, err)
		return string(b)
	}

	first := run("first", "one", "-test.run", "^(TestBootID|TestLeaveDaemon)$")
	require.NoError(t, first.Err())
	assert.Positive(t, first.Boot, "the first command carries the boot's time")
	second := run("second", "two", "-test.run", "^(TestBootID|TestNoStrays|TestNoZombies)$")
	require.NoError(t, second.Err(), "no daemon of the first command survives it")
	assert.Zero(t, second.Boot, "the second command did not boot")
	assert.Equal(t, bootID(first, "first"), bootID(second, "second"), "one boot")
	out1, _ := first.ReadOutput("first")
	out2, _ := second.ReadOutput("second")
	assert.Contains(t, string(out1), `mark "one"`)
	assert.Contains(t, string(out2), `mark "two"`)
	assert.NotContains(t, string(out2), `mark "one"`, "outputs are apart")
	assert.FileExists(t, filepath.Join(dir, "second", "result.json"))

	warn := run("warn", "", "-test.run", "^TestWarn$")
	require.NotEmpty(t, warn.Splats, "the kernel's report is the package's")
	assert.Error(t, warn.Err(), "a kernel report fails the package that caused it")
	assert.Nil(t, warn.Failure)
	assert.True(t, s.Alive(), "a kernel report does not end the session")

	failed := run("failed", "", "-test.run", "^TestFailOnPurpose$")
	require.NotNil(t, failed.Commands[0].Exit)
	assert.Equal(t, 1, failed.Commands[0].Exit.Code)
	assert.Nil(t, failed.Failure, "a failing test is not a failing guest")
	assert.True(t, s.Alive())

	crash := run("crash", "", "-test.run", "^TestPanicKernel$")
	require.NotNil(t, crash.Failure, "the panic fails the command that caused it")
	assert.Equal(t, vmtest.FailPanic, crash.Failure.Kind)
	assert.False(t, s.Alive())
	_, err = s.Run(ctx, vmtest.SessionCommand{Command: vmtest.Command{ID: "after", Binary: e.sample}, OutDir: filepath.Join(dir, "after")})
	assert.ErrorIs(t, err, vmtest.ErrSessionOver)
}
