package testenv

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// StreamTCP sends size bytes from a connection dialled by dial to one
// accepted on ln, and returns how many bytes the receiver read and the time
// from the dial to the receiver's end of stream.
func StreamTCP(ln net.Listener, dial func() (net.Conn, error), size int) (int64, time.Duration, error) {
	type rd struct {
		n   int64
		err error
	}
	got := make(chan rd, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- rd{0, err}
			return
		}
		defer c.Close()
		n, err := io.Copy(io.Discard, c)
		got <- rd{n, err}
	}()
	start := time.Now()
	c, err := dial()
	if err != nil {
		return 0, 0, fmt.Errorf("dial: %w", err)
	}
	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	for left := size; left > 0; {
		n := min(left, len(chunk))
		if _, err := c.Write(chunk[:n]); err != nil {
			c.Close()
			return 0, 0, fmt.Errorf("write: %w", err)
		}
		left -= n
	}
	if err := c.Close(); err != nil {
		return 0, 0, fmt.Errorf("close: %w", err)
	}
	select {
	case r := <-got:
		if r.err != nil {
			return r.n, time.Since(start), fmt.Errorf("receive: %w", r.err)
		}
		return r.n, time.Since(start), nil
	case <-time.After(60 * time.Second):
		return 0, 0, errors.New("receiver did not finish in 60s")
	}
}
