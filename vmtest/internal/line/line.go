// Package line keeps waits in order of priority: the highest first, the
// first to come among equals. Whoever waits joins, looks whether it is
// first before it takes what has freed, and leaves when done; the others
// look again when the line changes. The guest slots of a vmtest process
// (slots.Queue) and the packages waiting for a kernel's guests (vmtest
// run's guest server) both wait this way.
package line

import "sync"

// Line is a line of waits; its zero value is empty and ready.
type Line struct {
	mu      sync.Mutex
	seq     uint64
	places  []*Place
	changed chan struct{} // closed and renewed when a wait joins or leaves
}

// Place is a wait's place in a line.
type Place struct {
	prio float64
	seq  uint64
}

// Join puts a wait of priority prio (higher goes first) in the line.
func (l *Line) Join(prio float64) *Place {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	p := &Place{prio: prio, seq: l.seq}
	l.places = append(l.places, p)
	l.signal()
	return p
}

// Leave takes p out of the line.
func (l *Line) Leave(p *Place) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, o := range l.places {
		if o == p {
			l.places = append(l.places[:i], l.places[i+1:]...)
			break
		}
	}
	l.signal()
}

// First reports whether p is first in line.
func (l *Line) First(p *Place) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	var f *Place
	for _, o := range l.places {
		if f == nil || o.prio > f.prio || (o.prio == f.prio && o.seq < f.seq) {
			f = o
		}
	}
	return f == p
}

// Len is how many wait.
func (l *Line) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.places)
}

// Changed returns a channel closed at the next join or leave. Take it
// before asking First, so that a change in between is not missed.
func (l *Line) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed == nil {
		l.changed = make(chan struct{})
	}
	return l.changed
}

// signal wakes the waits to look again. l.mu held.
func (l *Line) signal() {
	if l.changed != nil {
		close(l.changed)
	}
	l.changed = make(chan struct{})
}
