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
			for _, g := range files[:i] {
				g.Close()
			}
			return nil, fmt.Errorf("vm slots: %w", err)
		}
		files[i] = f
	}
	delay := 10 * time.Millisecond
	for {
		for i, f := range files {
			if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
				for j, g := range files {
					if j != i {
						g.Close()
					}
				}
				return &Slot{f: f}, nil
			}
		}
		select {
		case <-ctx.Done():
			for _, f := range files {
				f.Close()
			}
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		if delay < 200*time.Millisecond {
			delay *= 2
		}
	}
}
