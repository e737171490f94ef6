package vmtest

import (
	"bufio"
	"io"
	"strings"
	"sync"
)

// console copies the guest console to a log and keeps its last lines, so a
// failure can be shown with the context that led to it.
type console struct {
	mu    sync.Mutex
	last  []string
	keep  int
	panic string // first "Kernel panic" line seen
}

func newConsole(keep int) *console { return &console{keep: keep} }

// copy reads r to EOF, writing everything to w.
func (c *console) copy(r io.Reader, w io.Writer) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			_, _ = io.WriteString(w, line)
			c.add(line)
		}
		if err != nil {
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
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.panic == "" && strings.Contains(line, "Kernel panic - not syncing") {
		c.panic = timestamp.ReplaceAllString(line, "")
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

func (c *console) panicLine() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.panic
}
