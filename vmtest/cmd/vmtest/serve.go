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

	"github.com/skbstore/skbstore/images"
	"github.com/skbstore/skbstore/vmtest"
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
// go test hands to vmtest exec in one guest per kernel (a vmtest.Session),
// one after another. go test still builds, runs and reports each package as
// it always does; each vmtest exec sends its binary, arguments, directory
// and environment here instead of booting, and prints what comes back. A
// guest that dies or hangs fails the package that was running; the next one
// gets a fresh guest.
type guestServer struct {
	ctx    context.Context
	kernel string
	opts   vmtest.Options // of every session, but OutDir
	roots  []string       // the trees the sessions share: a package must be below one
	dir    string         // the kernel's results: sessions' boots in .boot-N
	sock   string
	ln     net.Listener
	wg     sync.WaitGroup

	mu    sync.Mutex
	sess  *vmtest.Session
	boots int
	errs  []error
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
func startGuestServer(ctx context.Context, kernel string, opts vmtest.Options, roots []string, dir string) (*guestServer, error) {
	sockDir, err := os.MkdirTemp("", "vmtest-server-")
	if err != nil {
		return nil, err
	}
	s := &guestServer{ctx: ctx, kernel: kernel, opts: opts, roots: roots, dir: dir, sock: filepath.Join(sockDir, "s")}
	if s.ln, err = net.Listen("unix", s.sock); err != nil {
		os.RemoveAll(sockDir)
		return nil, fmt.Errorf("guest server: %w", err)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if _, err := s.session(); err != nil {
			s.note(err)
		}
	}()
	go s.accept()
	return s, nil
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

// session returns the live session, booting one if there is none.
func (s *guestServer) session() (*vmtest.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sess != nil && s.sess.Alive() {
		return s.sess, nil
	}
	if s.sess != nil {
		old := s.sess
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := old.Close(); err != nil {
				s.note(err)
			}
		}()
	}
	s.boots++
	o := s.opts
	o.OutDir = filepath.Join(s.dir, fmt.Sprintf(".boot-%d", s.boots))
	sess, err := vmtest.StartSession(s.ctx, o)
	if err != nil {
		s.sess = nil
		return nil, fmt.Errorf("boot %s: %w", s.kernel, err)
	}
	s.sess = sess
	return sess, nil
}

// drop ends sess if it is still the current session.
func (s *guestServer) drop(sess *vmtest.Session) {
	s.mu.Lock()
	if s.sess == sess {
		s.sess = nil
	}
	s.mu.Unlock()
	if err := sess.Close(); err != nil {
		s.note(err)
	}
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
	ctx, cancel := context.WithCancel(s.ctx)
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
	var sess *vmtest.Session
	var err error
	for try := 0; try < 2; try++ {
		if sess, err = s.session(); err != nil {
			break
		}
		res, err = sess.Run(ctx, cmd)
		if !errors.Is(err, vmtest.ErrSessionOver) {
			break
		}
		s.drop(sess)
	}
	var out bytes.Buffer
	if err != nil {
		fmt.Fprintf(&out, "vmtest: %v\n", err)
		w.reply(execReply{Code: 1, Stderr: out.String()})
		return
	}
	if !sess.Alive() {
		s.drop(sess)
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
	s.wg.Wait()
	s.mu.Lock()
	sess := s.sess
	s.sess = nil
	errs := s.errs
	s.mu.Unlock()
	if sess != nil {
		if err := sess.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	os.RemoveAll(filepath.Dir(s.sock))
	return errors.Join(errs...)
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
