package vmtest

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/skbstore/skbstore/vmtest/internal/proto"
)

// KernelTimes are points on the guest kernel's own clock (seconds since it
// started), read from its console: they split a boot into the kernel's part
// and user space's, which host-side times cannot. Zero means not seen.
// InitAfter is the same start of /init on the host's clock.
type KernelTimes struct {
	// Init is when the kernel started /init: the end of its own boot.
	Init float64
	// PowerOff is when the kernel began to power the machine off.
	PowerOff float64
	// InitAfter is the time from QEMU's start to the console's "Run /init"
	// line, on the host's clock (0 when not timed). Unlike Init it does not
	// depend on when the kernel's clock starts: under emulation the fast TSC
	// calibration against the PIT mostly fails and the kernel's clock then
	// starts some 0.25 s later into its boot than when it works.
	InitAfter time.Duration
}

// UserSpace is the time from /init to power-off, when both were seen.
func (k KernelTimes) UserSpace() float64 {
	if k.Init == 0 || k.PowerOff == 0 {
		return 0
	}
	return k.PowerOff - k.Init
}

// kernelTime returns the printk timestamp of a console line, if it has one.
func kernelTime(line string) (float64, bool) {
	m := timestamp.FindString(line)
	if m == "" {
		return 0, false
	}
	v, err := strconv.ParseFloat(strings.Trim(m, "[] \t"), 64)
	return v, err == nil
}

// console copies the guest console to a log and keeps its last lines, so a
// failure can be shown with the context that led to it.
type console struct {
	mu    sync.Mutex
	last  []string
	keep  int
	panic string // first "Kernel panic" line seen
	times KernelTimes
	// lines, when set, is given every line (a splat scanner).
	lines func(string)
	// kernel is set once the kernel printed a line of its own.
	kernel bool
	// start is when QEMU started, for times on the host's clock; zero
	// when the lines are analysed afterwards.
	start time.Time
}

// maxConsoleLine is how much of a console line is kept for analysis; the log
// gets every byte.
const maxConsoleLine = 4096

func newConsole(keep int) *console { return &console{keep: keep} }

// copy reads r to EOF, writing everything to w. Lines are analysed up to
// maxConsoleLine bytes: a guest printing without newlines cannot make the
// host buffer without limit.
func (c *console) copy(r io.Reader, w io.Writer) {
	buf := make([]byte, 32<<10)
	var line []byte
	for {
		n, err := r.Read(buf)
		chunk := buf[:n]
		// Written as it comes, not by lines: a shell's prompt has no
		// newline after it (vmtest shell).
		if n > 0 {
			_, _ = w.Write(chunk)
		}
		for len(chunk) > 0 {
			part, i := chunk, bytes.IndexByte(chunk, '\n')
			if i >= 0 {
				part = chunk[:i+1]
			}
			if room := maxConsoleLine - len(line); room > 0 {
				line = append(line, part[:min(room, len(part))]...)
			}
			chunk = chunk[len(part):]
			if i >= 0 {
				c.add(string(line))
				line = line[:0]
			}
		}
		if err != nil {
			if len(line) > 0 {
				c.add(string(line))
			}
			return
		}
	}
}

func (c *console) add(line string) {
	line = strings.TrimRight(line, "\r\n")
	// Strip the terminal control sequences SeaBIOS prints.
	line = strings.Map(func(r rune) rune {
		if r == 0x1b {
			return -1
		}
		return r
	}, line)
	if c.lines != nil {
		c.lines(line)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.kernel && (strings.Contains(line, "Linux version ") || timestamp.MatchString(line)) {
		c.kernel = true
	}
	if c.panic == "" && strings.Contains(line, "Kernel panic - not syncing") {
		c.panic = timestamp.ReplaceAllString(line, "")
	}
	switch {
	case strings.Contains(line, "] Run /init as init process"):
		c.times.Init, _ = kernelTime(line)
		if !c.start.IsZero() {
			c.times.InitAfter = time.Since(c.start)
		}
	case strings.Contains(line, "] reboot: Power down"), strings.Contains(line, "] "+proto.PowerOffLine):
		c.times.PowerOff, _ = kernelTime(line)
	}
	c.last = append(c.last, line)
	if len(c.last) > c.keep {
		c.last = c.last[len(c.last)-c.keep:]
	}
}

func (c *console) tail() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.last...)
}

func (c *console) kernelTimes() KernelTimes {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.times
}

func (c *console) panicLine() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.panic
}

// kernelPrinted reports whether the kernel printed anything on the console.
func (c *console) kernelPrinted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.kernel
}
