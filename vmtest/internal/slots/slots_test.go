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

// waitQueued waits until q has n waits.
func waitQueued(t *testing.T, q *Queue, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return q.line.Len() == n }, 5*time.Second, time.Millisecond)
}

func TestQueueOrder(t *testing.T) {
	for _, tc := range []struct {
		name  string
		prios []float64 // in the order the waits come
		want  []int     // the order they get the slot, by index
	}{
		{"highest first", []float64{1, 3, 2}, []int{1, 2, 0}},
		{"equals in order of coming", []float64{5, 5, 5}, []int{0, 1, 2}},
		{"mixed", []float64{0, 7, 0, 7}, []int{1, 3, 0, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			held, err := Acquire(context.Background(), dir, 1)
			require.NoError(t, err)
			q := &Queue{Dir: dir, N: 1}
			var mu sync.Mutex
			var got []int
			var wg sync.WaitGroup
			for i, p := range tc.prios {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s, err := q.Acquire(context.Background(), p)
					if !assert.NoError(t, err) {
						return
					}
					mu.Lock()
					got = append(got, i)
					mu.Unlock()
					time.Sleep(5 * time.Millisecond)
					s.Release()
				}()
				waitQueued(t, q, i+1)
			}
			held.Release()
			wg.Wait()
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestQueueHeadLeaves(t *testing.T) {
	dir := t.TempDir()
	held, err := Acquire(context.Background(), dir, 1)
	require.NoError(t, err)
	q := &Queue{Dir: dir, N: 1}
	ctx, cancel := context.WithCancel(context.Background())
	headErr := make(chan error, 1)
	go func() {
		_, err := q.Acquire(ctx, 9)
		headErr <- err
	}()
	waitQueued(t, q, 1)
	next := make(chan *Slot, 1)
	go func() {
		s, err := q.Acquire(context.Background(), 1)
		assert.NoError(t, err)
		next <- s
	}()
	waitQueued(t, q, 2)
	cancel()
	require.ErrorIs(t, <-headErr, context.Canceled)
	held.Release()
	select {
	case s := <-next:
		s.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("the wait after a head that gave up never got the slot")
	}
}
