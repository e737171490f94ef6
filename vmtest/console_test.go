package vmtest

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/skbstore/skbstore/vmtest/internal/proto"
)

func TestKernelTimesFromConsole(t *testing.T) {
	c := newConsole(5)
	for _, l := range []string{
		"SeaBIOS (version 1.16.2)",
		"[    0.000000] Linux version 6.1.0-56-cloud-amd64",
		"[    1.582425] Run /init as init process",
		"[    1.582529]   with arguments:",
		"init: a user space line mentioning Run /init as init process",
		"[    2.200119] reboot: Power down",
	} {
		c.add(l + "\r\n")
	}
	k := c.kernelTimes()
	assert.InDelta(t, 1.582425, k.Init, 1e-9)
	assert.InDelta(t, 2.200119, k.PowerOff, 1e-9)
	assert.InDelta(t, 0.617694, k.UserSpace(), 1e-9)

	// A fast exit: the agent's own line marks the power-off.
	fast := newConsole(5)
	fast.add("[    1.5] Run /init as init process\n")
	fast.add("[    2.25] " + proto.PowerOffLine + "\n")
	assert.InDelta(t, 0.75, fast.kernelTimes().UserSpace(), 1e-9)

	none := newConsole(5)
	none.add("[    0.5] Kernel panic - not syncing: VFS: Unable to mount root fs\n")
	assert.Zero(t, none.kernelTimes().Init)
	assert.Zero(t, none.kernelTimes().UserSpace(), "no user space without both ends")
	assert.Zero(t, k.InitAfter, "lines analysed afterwards are not timed")
}

// The start of /init on the host's clock is when its line arrives, counted
// from the console's start, whatever the kernel's own clock says.
func TestInitAfterOnHostClock(t *testing.T) {
	c := newConsole(5)
	c.start = time.Now().Add(-3 * time.Second)
	r, w := io.Pipe()
	done := make(chan struct{})
	go func() {
		c.copy(r, io.Discard)
		close(done)
	}()
	_, _ = io.WriteString(w, "[    0.000000] Linux version 6.1.0-56-cloud-amd64\r\n[    0.2] Run /init as init")
	time.Sleep(50 * time.Millisecond) // the line is not whole yet
	_, _ = io.WriteString(w, " process\r\n")
	w.Close()
	<-done
	k := c.kernelTimes()
	assert.InDelta(t, 0.2, k.Init, 1e-9)
	assert.GreaterOrEqual(t, k.InitAfter, 3*time.Second+50*time.Millisecond)
	assert.Less(t, k.InitAfter, time.Minute)
}
