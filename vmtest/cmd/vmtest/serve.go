package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/skbstore/skbstore/images"
	"github.com/skbstore/skbstore/vmtest"
	"github.com/skbstore/skbstore/vmtest/internal/history"
	"github.com/skbstore/skbstore/vmtest/internal/line"
	"github.com/skbstore/skbstore/vmtest/internal/slots"
)

// Boot modes of vmtest run.
const (
	bootPerPackage = "per-package"
	bootPerKernel  = "per-kernel"
)

// serverEnv names the socket of the guest server of a vmtest run -boot
// per-kernel in the environment of go test, and so of each vmtest exec it
// starts.
const serverEnv = "VMTEST_SERVER"

// guestServer runs, for vmtest run -boot per-kernel, the test binaries that
// go test hands to vmtest exec in guests of the kernel that each run them
// one after another (vmtest.Session). go test still builds, runs and reports
// each package as it always does; each vmtest exec sends its binary,
// arguments, directory and environment here instead of booting, and prints
// what comes back. Up to -vms guests serve at once, each in one of the
// guest slots every vmtest process shares, so that go test's parallel
// packages keep running in parallel. A guest that dies or hangs fails the
// package that was running; the next one gets a fresh guest.
type guestServer struct {
	serverConfig
	ctx  context.Context // of the sessions: the run's
	stop context.CancelFunc
	// waits ends the waits for guest slots and requests when the server
	// closes: a wait for a slot that its own idle guests hold would never
	// end.
	waits context.Context
	sock  string
	ln    net.Listener
	wg    sync.WaitGroup

	// waiting are the requests waiting for a session, the longest
	// expected first.
	waiting line.Line

	mu    sync.Mutex
	pool  []*served     // live sessions
	idle  chan struct{} // closed and renewed when a session becomes idle
	boots int
	errs  []error
}

// serverConfig is what a guest server serves.
type serverConfig struct {
	kernel string
	f      *vmFlags
	opts   vmtest.Options // of every session, but OutDir
	roots  []string       // the trees the sessions share: a package must be below one
	dir    string         // the kernel's results: sessions' boots in .boot-N
	// history tells how long a package ran last time: when requests wait
	// for a guest, the longest goes first, and the longest wait of all
	// servers of the run gets the next guest slot (slots). It learns
	// each package's time here.
	history *history.Store
	slots   *slots.Queue
}

// served is a session of the pool and its guest slot.
type served struct {
	sess *vmtest.Session
	slot *slots.Slot
	busy bool
}

// execRequest is what vmtest exec sends the server.
type execRequest struct {
	ID         string
	Binary     string
	Args       []string
	Dir        string
	Env        []string
	Outputs    []vmtest.Output
	Libs       []images.File
	OutDir     string
	Keep       bool
	ModuleRoot string
}

// execReply is the server's last word on a request.
type execReply struct {
	Code     int
	Stderr   string // what vmtest exec prints on stderr
	Fallback string // non-empty: boot a guest of your own, for this reason
}

// Message kinds from the server: a piece of the command's output, then the
// reply.
const (
	msgOutput = 'o'
	msgReply  = 'r'
)

// startGuestServer listens on a socket of its own and boots the first guest
// at once, while go test compiles.
func startGuestServer(ctx context.Context, cfg serverConfig) (*guestServer, error) {
	sockDir, err := os.MkdirTemp("", "vmtest-server-")
	if err != nil {
		return nil, err
	}
	s := &guestServer{serverConfig: cfg, ctx: ctx, sock: filepath.Join(sockDir, "s"), idle: make(chan struct{})}
	s.waits, s.stop = context.WithCancel(ctx)
	if s.ln, err = net.Listen("unix", s.sock); err != nil {
		os.RemoveAll(sockDir)
		return nil, fmt.Errorf("guest server: %w", err)
	}
	// The first guest boots while go test compiles, at the lowest
	// priority: a package that waits for a guest slot comes first.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		sv, err := s.startIn(s.waits, 0)
		switch {
		case err == nil:
			s.release(sv)
		case !errors.Is(err, errPoolFull) && s.waits.Err() == nil:
			s.note(err)
		}
	}()
	go s.accept()
	return s, nil
}

// debugf tells what the server does, with $VMTEST_VERBOSE.
func (s *guestServer) debugf(format string, args ...any) {
	if os.Getenv("VMTEST_VERBOSE") != "" {
		fmt.Fprintf(os.Stderr, "vmtest: [%s] guest server: %s\n", s.kernel, fmt.Sprintf(format, args...))
	}
}

func (s *guestServer) note(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, err)
}

func (s *guestServer) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.handle(c)
		}()
	}
}

// take returns an idle live session of the pool, marked busy, for a
// request expected to run for expect: one that is idle, else a new one if
// the pool has room and a guest slot is free, else the first that becomes
// idle. Among waiting requests the longest expected goes first (the first
// to come among equals), so that a long package does not start last and run
// alone at the end.
func (s *guestServer) take(ctx context.Context, expect time.Duration) (*served, error) {
	me := s.waiting.Join(expect.Seconds())
	defer s.waiting.Leave(me)
	for {
		changed := s.waiting.Changed()
		s.mu.Lock()
		var dead []*served
		for _, sv := range s.pool {
			if !sv.busy && !sv.sess.Alive() {
				dead = append(dead, sv)
			}
		}
		for _, sv := range dead {
			s.remove(sv)
		}
		first := s.waiting.First(me)
		if first {
			for _, sv := range s.pool {
				if !sv.busy {
					sv.busy = true
					s.mu.Unlock()
					return sv, nil
				}
			}
		}
		room := len(s.pool) < max(s.f.vms, 1)
		idle := s.idle
		s.debugf("no idle guest of %d for a package of %.0fs (first in line: %v); room for another: %v", len(s.pool), expect.Seconds(), first, room)
		s.mu.Unlock()
		if !room {
			select {
			case <-idle:
				continue
			case <-changed:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		// A new guest, unless a session becomes idle first. It goes to
		// the first request in line, which may be another.
		slotCtx, cancel := context.WithCancel(ctx)
		got := make(chan *served, 1)
		errc := make(chan error, 1)
		go func() {
			sv, err := s.startIn(slotCtx, expect)
			if err != nil {
				errc <- err
				return
			}
			got <- sv
		}()
		select {
		case sv := <-got:
			cancel()
			if s.waiting.First(me) {
				return sv, nil
			}
			s.release(sv)
			continue
		case err := <-errc:
			cancel()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if errors.Is(err, errPoolFull) {
				continue // another request filled the pool: wait for one
			}
			return nil, err
		case <-idle:
			cancel()
			// The new guest, if it came meanwhile, joins the pool idle.
			select {
			case sv := <-got:
				s.release(sv)
			case <-errc:
			}
			continue
		case <-ctx.Done():
			cancel()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				select {
				case sv := <-got:
					s.release(sv)
				case <-errc:
				}
			}()
			return nil, ctx.Err()
		}
	}
}

// errPoolFull: the guest slot came when the pool had no room any more.
var errPoolFull = errors.New("the kernel's guests are all up")

// startIn boots a session in a free guest slot, busy, for a package
// expected to run for expect; ctx bounds the wait for the slot.
func (s *guestServer) startIn(ctx context.Context, expect time.Duration) (*served, error) {
	s.debugf("waiting for a guest slot (a package of %.0fs)", expect.Seconds())
	slot, err := s.slots.Acquire(ctx, expect.Seconds())
	if err != nil {
		s.debugf("no slot: %v", err)
		return nil, fmt.Errorf("wait for a free guest slot: %w", err)
	}
	s.debugf("got a guest slot")
	s.mu.Lock()
	if len(s.pool) >= max(s.f.vms, 1) {
		s.mu.Unlock()
		slot.Release()
		return nil, errPoolFull
	}
	s.boots++
	o := s.opts
	o.OutDir = filepath.Join(s.dir, fmt.Sprintf(".boot-%d", s.boots))
	s.mu.Unlock()
	// The session lives as long as the server, not as the request that
	// started it.
	sess, err := vmtest.StartSession(s.ctx, o)
	if err != nil {
		slot.Release()
		return nil, fmt.Errorf("boot %s: %w", s.kernel, err)
	}
	sv := &served{sess: sess, slot: slot, busy: true}
	s.mu.Lock()
	s.pool = append(s.pool, sv)
	s.mu.Unlock()
	return sv, nil
}

// release makes sv idle again, or ends it if its guest is gone.
func (s *guestServer) release(sv *served) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sv.busy = false
	if !sv.sess.Alive() {
		s.remove(sv)
	}
	close(s.idle)
	s.idle = make(chan struct{})
}

// remove takes sv out of the pool and ends it in the background. s.mu held.
func (s *guestServer) remove(sv *served) {
	for i, p := range s.pool {
		if p == sv {
			s.pool = append(s.pool[:i], s.pool[i+1:]...)
			break
		}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := sv.sess.Close(); err != nil {
			s.note(err)
		}
		sv.slot.Release()
	}()
}

// covers reports whether the sessions share the tree dir is in.
func (s *guestServer) covers(dir string) bool {
	for _, r := range s.roots {
		if dir == r || strings.HasPrefix(dir, r+"/") {
			return true
		}
	}
	return false
}

func (s *guestServer) handle(c net.Conn) {
	var req execRequest
	if err := json.NewDecoder(io.LimitReader(c, 16<<20)).Decode(&req); err != nil {
		return
	}
	w := &msgWriter{w: c}
	if !s.covers(req.ModuleRoot) {
		w.reply(execReply{Fallback: fmt.Sprintf("%s is outside the tree the kernel's guest shares (%s)", req.ModuleRoot, strings.Join(s.roots, ", "))})
		return
	}
	// The client goes away when go test gives up on it (its -timeout):
	// the command is stopped, with the guest.
	ctx, cancel := context.WithCancel(s.waits)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, c)
		cancel()
	}()
	cmd := vmtest.SessionCommand{
		Command: vmtest.Command{ID: req.ID, Binary: req.Binary, Args: req.Args, Dir: req.Dir, Outputs: req.Outputs},
		Env:     req.Env, Files: req.Libs, OutDir: req.OutDir, Output: w.output(),
	}
	var res *vmtest.Result
	var err error
	expect := s.history.Expect(s.kernel, req.Dir)
	for try := 0; try < 2; try++ {
		var sv *served
		if sv, err = s.take(ctx, expect); err != nil {
			break
		}
		res, err = sv.sess.Run(ctx, cmd)
		s.release(sv)
		if !errors.Is(err, vmtest.ErrSessionOver) {
			break
		}
	}
	if res != nil && res.Duration > res.Boot {
		// The package's own time: the first one in a guest is also
		// charged its boot.
		s.history.Record(s.kernel, req.Dir, res.Duration-res.Boot)
	}
	var out bytes.Buffer
	if err != nil {
		fmt.Fprintf(&out, "vmtest: %v\n", err)
		w.reply(execReply{Code: 1, Stderr: out.String()})
		return
	}
	fmt.Fprintf(&out, "vmtest: kernel %s (%s), accelerator %s, one boot for the kernel's packages (boot %.1fs, this package %.1fs)\n",
		s.kernel, res.Release, res.Accel, res.Boot.Seconds(), res.Duration.Seconds())
	code := reportExec(&out, res, s.kernel, req.Keep)
	w.reply(execReply{Code: code, Stderr: out.String()})
}

// close stops accepting, waits for the requests under way and ends the
// session.
func (s *guestServer) close() error {
	s.ln.Close()
	s.stop()
	s.wg.Wait() // the requests, and the first boot
	s.mu.Lock()
	for len(s.pool) > 0 {
		s.remove(s.pool[0])
	}
	s.mu.Unlock()
	s.wg.Wait() // the sessions' ends
	os.RemoveAll(filepath.Dir(s.sock))
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

// msgWriter writes the server's messages: a kind byte, a length, the bytes.
type msgWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (m *msgWriter) send(kind byte, p []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var h [5]byte
	h[0] = kind
	binary.BigEndian.PutUint32(h[1:], uint32(len(p)))
	if _, err := m.w.Write(h[:]); err != nil {
		return err
	}
	_, err := m.w.Write(p)
	return err
}

func (m *msgWriter) reply(r execReply) {
	b, _ := json.Marshal(r)
	_ = m.send(msgReply, b)
}

type outputWriter struct{ m *msgWriter }

func (o outputWriter) Write(p []byte) (int, error) {
	// A client that went away loses the output; the command goes on to
	// be stopped by its context.
	_ = o.m.send(msgOutput, p)
	return len(p), nil
}

func (m *msgWriter) output() io.Writer { return outputWriter{m} }

// execViaServer hands the command to the guest server at sock and relays
// its output to stdout. fallback says why the server did not take it.
func execViaServer(sock string, req execRequest, stdout, stderr io.Writer) (code int, fallback string, err error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return 1, "", fmt.Errorf("guest server: %w", err)
	}
	defer c.Close()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return 1, "", fmt.Errorf("guest server: %w", err)
	}
	r := bufio.NewReader(c)
	for {
		var h [5]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return 1, "", fmt.Errorf("guest server went away: %w", err)
		}
		n := binary.BigEndian.Uint32(h[1:])
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil {
			return 1, "", fmt.Errorf("guest server went away: %w", err)
		}
		switch h[0] {
		case msgOutput:
			if _, err := stdout.Write(p); err != nil {
				return 1, "", err
			}
		case msgReply:
			var rep execReply
			if err := json.Unmarshal(p, &rep); err != nil {
				return 1, "", fmt.Errorf("guest server: %w", err)
			}
			if rep.Fallback != "" {
				return 0, rep.Fallback, nil
			}
			io.WriteString(stderr, rep.Stderr)
			return rep.Code, "", nil
		default:
			return 1, "", fmt.Errorf("guest server: message of unknown kind %q", h[0])
		}
	}
}
