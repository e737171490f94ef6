// Package slots bounds how many VMs run at once across processes: `vmtest
// run` starts one go test per kernel, go test starts one `vmtest exec` per
// package, and all of them take a slot before booting. A slot is a lock file
// held with flock, so a slot is freed even when its holder is killed.
package slots

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/vmtest/internal/line"
)

// Slot is a held slot; Release frees it.
type Slot struct {
	f *os.File
}

// Release frees the slot.
func (s *Slot) Release() {
	if s != nil && s.f != nil {
		_ = unix.Flock(int(s.f.Fd()), unix.LOCK_UN)
		s.f.Close()
		s.f = nil
	}
}

// Acquire takes one of n slots in dir, waiting until one is free or ctx ends.
func Acquire(ctx context.Context, dir string, n int) (*Slot, error) {
	files, err := open(dir, n)
	if err != nil {
		return nil, err
	}
	delay := 10 * time.Millisecond
	for {
		if s := try(files); s != nil {
			return s, nil
		}
		select {
		case <-ctx.Done():
			closeAll(files)
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = backoff(delay)
	}
}

func open(dir string, n int) ([]*os.File, error) {
	if n < 1 {
		n = 1
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("vm slots: %w", err)
	}
	files := make([]*os.File, n)
	for i := range files {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("slot%d", i)), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			closeAll(files[:i])
			return nil, fmt.Errorf("vm slots: %w", err)
		}
		files[i] = f
	}
	return files, nil
}

// try takes a free slot of files, if one is, and closes the other files;
// else it returns nil and keeps them open.
func try(files []*os.File) *Slot {
	for i, f := range files {
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			for j, g := range files {
				if j != i {
					g.Close()
				}
			}
			return &Slot{f: f}
		}
	}
	return nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// backoff is the next wait between tries: slots are held for seconds, so
// polling settles at five times a second.
func backoff(d time.Duration) time.Duration {
	return min(2*d, 200*time.Millisecond)
}

// Queue orders one process's waits for the slots of Dir: only the waiter
// of the highest priority (the first to come among equals) tries to take
// one, so the slot that frees goes to the most pressing wait of the
// process. Other processes' waits compete with the queue's head as with any
// Acquire.
type Queue struct {
	Dir string
	N   int

	line line.Line
}

// Acquire takes a slot for a wait of priority prio (higher goes first),
// waiting until one is free and no wait of the queue with a higher
// priority is left, or ctx ends.
func (q *Queue) Acquire(ctx context.Context, prio float64) (*Slot, error) {
	files, err := open(q.Dir, q.N)
	if err != nil {
		return nil, err
	}
	me := q.line.Join(prio)
	defer q.line.Leave(me)
	delay := 10 * time.Millisecond
	for {
		changed := q.line.Changed()
		var tick <-chan time.Time
		if q.line.First(me) {
			if s := try(files); s != nil {
				return s, nil
			}
			tick = time.After(delay)
			delay = backoff(delay)
		} else {
			delay = 10 * time.Millisecond // the next time it is first, it tries at once
		}
		select {
		case <-ctx.Done():
			closeAll(files)
			return nil, ctx.Err()
		case <-changed:
		case <-tick:
		}
	}
}
