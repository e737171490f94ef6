package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// status shows what each kernel of a run is doing. On a terminal it keeps
// one status line at the bottom, redrawn every second with elapsed times;
// otherwise it prints a plain line whenever a kernel changes state.
type status struct {
	mu      sync.Mutex
	w       io.Writer
	tty     bool
	start   time.Time
	order   []string
	kernels map[string]*kernelStatus
	drawn   bool
	stop    chan struct{}
}

type kernelStatus struct {
	state          string
	since          time.Time
	passed, failed int
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// newStatus shows the kernels' states on w; live is false when something
// else (a guest's shell) may take the terminal, which a redrawn line would
// scribble on.
func newStatus(w *os.File, names []string, live bool) *status {
	s := &status{w: w, tty: live && isTerminal(w) && os.Getenv("TERM") != "dumb", start: time.Now(),
		order: names, kernels: map[string]*kernelStatus{}, stop: make(chan struct{})}
	for _, n := range names {
		s.kernels[n] = &kernelStatus{state: "waiting", since: s.start}
	}
	if s.tty {
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					s.mu.Lock()
					s.draw()
					s.mu.Unlock()
				case <-s.stop:
					return
				}
			}
		}()
	}
	return s
}

// set changes a kernel's state.
func (s *status) set(kernel, state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.kernels[kernel]
	if k.state == state {
		return
	}
	k.state, k.since = state, time.Now()
	if s.tty {
		s.draw()
		return
	}
	fmt.Fprintf(s.w, "[%s] %s (%s)\n", kernel, state, time.Since(s.start).Round(100*time.Millisecond))
}

// test counts a finished test.
func (s *status) test(kernel string, failed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if failed {
		s.kernels[kernel].failed++
	} else {
		s.kernels[kernel].passed++
	}
}

// println prints a line above the status line.
func (s *status) println(out io.Writer, line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clear()
	fmt.Fprintln(out, line)
	if s.tty {
		s.draw()
	}
}

func (s *status) clear() {
	if s.tty && s.drawn {
		fmt.Fprint(s.w, "\r\033[K")
		s.drawn = false
	}
}

func (s *status) draw() {
	if !s.tty {
		return
	}
	var parts []string
	for _, n := range s.order {
		k := s.kernels[n]
		p := fmt.Sprintf("%s %s %ds", n, k.state, int(time.Since(k.since).Seconds()))
		if k.passed+k.failed > 0 {
			p += fmt.Sprintf(" %d✓", k.passed)
			if k.failed > 0 {
				p += fmt.Sprintf(" %d✗", k.failed)
			}
		}
		parts = append(parts, p)
	}
	line := fmt.Sprintf("[%ds] %s", int(time.Since(s.start).Seconds()), strings.Join(parts, " | "))
	fmt.Fprint(s.w, "\r\033[K"+line)
	s.drawn = true
}

// done stops redrawing and removes the status line.
func (s *status) done() {
	close(s.stop)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clear()
}
