//go:build linux

package guest

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// kmsgStream ships the kernel log to the host while the job runs, as
// TypeDmesg frames: the console shows only what passes the console log level,
// but splats must be found whatever their level. Streaming rather than one
// dump at the end means the boot log crosses the emulated UART while the tests
// run on the other vCPU (a dump cost ~50 ms of a trivial run), and the host
// keeps the log up to the last record when a guest hangs.
type kmsgStream struct {
	send         func([]byte)
	fd           int
	stopR, stopW int
	done         chan struct{}
}

// coalesce is how long the stream waits after a record for more before
// sending, so a burst of printk becomes one frame. Frames stay small (4 KiB,
// ~5 ms on the emulated UART) so they do not hold up the job's own frames.
const coalesce = 20 // milliseconds

func startKmsg(send func([]byte)) (*kmsgStream, error) {
	// Raw syscalls and poll(2): an os.File on /dev/kmsg would park in Go's
	// poller at the end of the log instead of telling us it was drained.
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/kmsg: %w", err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("kmsg stream: %w", err)
	}
	s := &kmsgStream{send: send, fd: fd, stopR: p[0], stopW: p[1], done: make(chan struct{})}
	go s.loop()
	return s, nil
}

// stop sends what is left of the log and returns when it is sent.
func (s *kmsgStream) stop() {
	_, _ = unix.Write(s.stopW, []byte{1})
	<-s.done
	unix.Close(s.fd)
	unix.Close(s.stopR)
	unix.Close(s.stopW)
}

func (s *kmsgStream) loop() {
	defer close(s.done)
	buf := make([]byte, 8192)
	var out []byte
	for stopping := false; ; {
		for {
			n, err := unix.Read(s.fd, buf)
			if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.EINTR) {
				continue // EPIPE: records overwritten while reading; go on
			}
			if err != nil || n <= 0 {
				break
			}
			out = appendKmsgLine(out, buf[:n])
			if len(out) >= 4<<10 {
				s.send(out)
				out = out[:0]
			}
		}
		if len(out) > 0 {
			s.send(out)
			out = out[:0]
		}
		if stopping {
			return
		}
		fds := []unix.PollFd{{Fd: int32(s.stopR), Events: unix.POLLIN}, {Fd: int32(s.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		if fds[0].Revents == 0 {
			_, _ = unix.Poll(fds[:1], coalesce)
		}
		stopping = fds[0].Revents != 0
	}
}

// appendKmsgLine appends one /dev/kmsg record ("prio,seq,usec,flags;text\n")
// to b as a dmesg-style line.
func appendKmsgLine(b, rec []byte) []byte {
	s := string(rec)
	head, text, ok := strings.Cut(s, ";")
	if !ok {
		return append(b, s...)
	}
	// Continuation lines (" KEY=value") follow the text; keep the text only.
	text, _, _ = strings.Cut(text, "\n")
	f := strings.SplitN(head, ",", 4)
	if len(f) < 3 {
		return append(append(b, text...), '\n')
	}
	usec, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return append(append(b, text...), '\n')
	}
	b = append(b, '[')
	sec := strconv.FormatInt(usec/1e6, 10)
	for i := len(sec); i < 5; i++ {
		b = append(b, ' ')
	}
	b = append(b, sec...)
	b = append(b, '.')
	frac := strconv.FormatInt(usec%1e6, 10)
	for i := len(frac); i < 6; i++ {
		b = append(b, '0')
	}
	b = append(b, frac...)
	b = append(b, "] "...)
	b = append(b, text...)
	return append(b, '\n')
}
