package main

import (
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/skbstore/skbstore/vmtest"
)

// TestFloorTest boots the bench's floor images on 6.1: the plain floor, the
// floor with the trivial test (which must run and pass, or "floor+test"
// would time a boot that ran nothing), and the same test binary given a
// flag it refuses, which the bench must not count.
func TestFloorTest(t *testing.T) {
	vmtestBin(t) // skipped with -short like every boot
	ctx := context.Background()
	var f vmFlags
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	f.register(fs)
	require.NoError(t, fs.Parse([]string{"-kernel", "6.1", "-autoload=false"}))
	require.NoError(t, f.check())
	p, err := prepareKernel(ctx, &f, io.Discard)
	require.NoError(t, err)
	tmp := t.TempDir()
	a := &benchArch{}
	require.NoError(t, a.build(ctx, tmp, p.kernel.Arch))

	// The test binary, with an argument it refuses: it exits 2 at once.
	initBin, err := os.ReadFile(filepath.Join(tmp, "floorinit"))
	require.NoError(t, err)
	test, err := os.ReadFile(a.trivial)
	require.NoError(t, err)
	failing := filepath.Join(tmp, "floor-failing.cpio")
	require.NoError(t, writeFloorImage(failing, initBin, floorTestRecords(test, []string{"-test.no-such-flag"})))

	opts := f.options(p, "")
	for _, tc := range []struct {
		name, img string
		passed    bool // the console says the test passed
		ran       bool // the test binary printed anything
	}{
		{"floor", a.floorImg, false, false},
		{"floor+test", a.floorTestImg, true, true},
		{"failing test", failing, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fl, err := vmtest.Floor(ctx, opts, tc.img)
			require.NoError(t, err, "the floor powers off whatever its test did")
			t.Logf("%s: %s, /init after %s", tc.name, fl.Duration, fl.Kernel.InitAfter)
			assert.Positive(t, fl.Kernel.InitAfter, "the console's Run /init line is timed")
			assert.Less(t, fl.Kernel.InitAfter, fl.Duration)
			assert.Equal(t, tc.passed, floorTestErr(fl.Console) == nil, "console:\n%s", fl.Console)
			assert.Equal(t, tc.ran, strings.Contains(fl.Console, "floorinit: test "), "console:\n%s", fl.Console)
			if tc.passed {
				assert.Contains(t, fl.Console, "--- PASS: TestPass")
			}
			if tc.name == "failing test" {
				assert.Contains(t, fl.Console, "flag provided but not defined: -test.no-such-flag")
				assert.Contains(t, fl.Console, "floorinit: test failed: exit status 2")
			}
		})
	}
}
