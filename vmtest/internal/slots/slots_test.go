package slots

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAcquireBoundsConcurrency(t *testing.T) {
	dir := t.TempDir()
	const n, workers = 2, 6
	var running, peak atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Acquire(context.Background(), dir, n)
			if !assert.NoError(t, err) {
				return
			}
			cur := running.Add(1)
			for {
				p := peak.Load()
				if cur <= p || peak.CompareAndSwap(p, cur) {
					break
				}
			}
			time.Sleep(30 * time.Millisecond)
			running.Add(-1)
			s.Release()
		}()
	}
	wg.Wait()
	assert.Equal(t, int32(n), peak.Load())
}

func TestAcquireHonoursContext(t *testing.T) {
	dir := t.TempDir()
	s, err := Acquire(context.Background(), dir, 1)
	require.NoError(t, err)
	defer s.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = Acquire(ctx, dir, 1)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}
