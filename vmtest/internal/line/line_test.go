package line

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFirst(t *testing.T) {
	for _, tc := range []struct {
		name  string
		prios []float64 // in the order the waits join
		want  []int     // the order they come first, by index, each leaving in turn
	}{
		{"highest first", []float64{1, 3, 2}, []int{1, 2, 0}},
		{"equals in order of coming", []float64{5, 5, 5}, []int{0, 1, 2}},
		{"mixed", []float64{0, 7, 0, 7}, []int{1, 3, 0, 2}},
		{"one", []float64{0}, []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l Line
			var places []*Place
			for _, p := range tc.prios {
				places = append(places, l.Join(p))
			}
			require.Equal(t, len(tc.prios), l.Len())
			var got []int
			for range places {
				for i, p := range places {
					if p != nil && l.First(p) {
						got = append(got, i)
						l.Leave(p)
						places[i] = nil
						break
					}
				}
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestChanged(t *testing.T) {
	var l Line
	c := l.Changed()
	p := l.Join(1)
	requireClosed(t, c, "a join")
	c = l.Changed()
	requireOpen(t, c)
	l.Leave(p)
	requireClosed(t, c, "a leave")
	require.Zero(t, l.Len())
	require.False(t, l.First(p), "a wait that left is not first")
}

func requireClosed(t *testing.T, c <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	default:
		t.Fatalf("%s did not close the channel", what)
	}
}

func requireOpen(t *testing.T, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
		t.Fatal("closed with no change")
	default:
	}
}
