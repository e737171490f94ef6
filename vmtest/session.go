package vmtest

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/images"
	"github.com/skbstore/skbstore/vmtest/internal/proto"
)

// ErrSessionOver is returned by Session.Run when the guest is gone (it
// crashed, hung, or an earlier command's results could not be trusted)
// before the command started: run it in a new session.
var ErrSessionOver = errors.New("vmtest: the session's guest is gone")

// Session is a guest booted once that runs commands sent one at a time, each
// with its own results directory, environment and caps as if it had the
// guest to itself (vmtest run -boot per-kernel). Between commands the agent
// kills what the last one left running and removes its files; the kernel's
// state (modules, sysctls, mounts) carries over, as on a host running
// test binaries one after another. A guest that dies or hangs fails the
// command that was running, and the session is over.
type Session struct {
	opts    Options // Timeout: per command
	key     []byte
	res     *Result // the boot's own, in opts.OutDir
	spool   *spool
	cancel  context.CancelFunc
	hello   chan struct{}
	exited  chan struct{} // the boot returned: QEMU is gone
	bootErr error

	runMu   sync.Mutex // one command at a time
	mu      sync.Mutex
	w       *proto.Writer
	cur     *resultReader // the running command's
	curDone chan struct{}
	ran     int
	once    sync.Once
	splats  *splatScanner // the console's and, between commands, dmesg's
	taken   int           // splats handed to commands so far
	rr      *resultReader // the boot's; read once it returned
	blamed  bool          // the guest's failure is a command's
}

// SessionCommand is a command for Session.Run.
type SessionCommand struct {
	Command
	// Env is added to its environment, after Options.Env.
	Env []string
	// Files are more files it needs, at their Guest paths (a dynamically
	// linked binary's C libraries).
	Files []images.File
	// OutDir receives its results as Options.OutDir does a boot's:
	// <ID>.out, artifacts/, dmesg.log and console.log of its time,
	// result.json.
	OutDir string
	// Output, when set, receives a live copy of its output.
	Output io.Writer
}

// sessionLife bounds a session's boot; Options.Timeout bounds each command.
const sessionLife = 24 * time.Hour

// spoolSize is the spool disk's size: sparse, and its files' blocks are
// released when their command ends. A session whose spool is full is over.
const spoolSize = 8 << 30

// StartSession boots opts.Kernel with opts' modules, files and shares and
// returns at once: Run waits for the guest. opts.Commands must be empty;
// opts.OutDir receives the boot's own console.log, dmesg.log and result.json.
func StartSession(ctx context.Context, opts Options) (*Session, error) {
	if len(opts.Commands) > 0 {
		return nil, errors.New("vmtest: a session's commands are given to Run")
	}
	qemu, err := opts.prepare()
	if err != nil {
		return nil, err
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	s := &Session{opts: opts, key: key, hello: make(chan struct{}), exited: make(chan struct{})}
	drives, mounts, err := opts.disks(ctx, opts.OutDir)
	if err != nil {
		return nil, err
	}
	cleanup := func() {
		for _, d := range drives {
			if !d.readOnly {
				os.Remove(d.path)
			}
		}
	}
	if s.spool, err = newSpool(filepath.Join(opts.OutDir, "spool.img")); err != nil {
		cleanup()
		return nil, err
	}
	drives = append(drives, drive{path: s.spool.path, readOnly: true})
	bootOpts := opts
	bootOpts.serve = s
	bootOpts.Timeout = sessionLife
	initrd := filepath.Join(opts.OutDir, "initramfs.cpio")
	if err := writeImage(initrd, bootOpts, key, mounts); err != nil {
		cleanup()
		s.spool.remove()
		return nil, err
	}
	accel, err := ChooseAccel(ctx, qemu, opts.Kernel, opts.Accel, opts.AccelCache)
	if err != nil {
		cleanup()
		s.spool.remove()
		os.Remove(initrd)
		return nil, err
	}
	s.res = &Result{Accel: accel, OutDir: opts.OutDir}
	bootCtx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	go func() {
		defer close(s.exited)
		defer cleanup()
		defer os.Remove(initrd)
		defer s.spool.remove()
		s.bootErr = boot(bootCtx, qemu, initrd, drives, accel, bootOpts, key, s.res)
		if err := writeResult(s.res); err != nil && s.bootErr == nil {
			s.bootErr = err
		}
	}()
	return s, nil
}

// attach is called by the boot once the result port is up.
func (s *Session) attach(rr *resultReader, conn net.Conn, splats *splatScanner) {
	s.mu.Lock()
	s.w = proto.NewWriter(conn, s.key)
	s.splats, s.rr = splats, rr
	s.mu.Unlock()
	rr.sink = func() *resultReader {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.cur
	}
	rr.onHello = func() { s.once.Do(func() { close(s.hello) }) }
	rr.onExit = func(cr *resultReader) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if cr == s.cur {
			s.cur = nil
			close(s.curDone)
		}
	}
}

// Alive reports whether the guest may still run commands.
func (s *Session) Alive() bool {
	select {
	case <-s.exited:
		return false
	default:
	}
	// A command whose results came with protocol errors ended the
	// session (Run): nothing from that guest is trusted any more.
	return !s.spool.full()
}

// Run runs c in the guest and returns its result, as Run does for a boot of
// its own: a guest that dies or hangs (Options.Timeout from the command's
// start) fails it, and ends the session. ErrSessionOver means c did not run.
func (s *Session) Run(ctx context.Context, c SessionCommand) (*Result, error) {
	if !validID(c.ID) {
		return nil, fmt.Errorf("vmtest: command ID %q: use letters, digits, '.', '_' and '-'", c.ID)
	}
	if c.OutDir == "" {
		return nil, errors.New("vmtest: no output directory for the command")
	}
	check := s.opts
	check.Commands = []Command{c.Command}
	if err := check.checkBinaries(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("vmtest: %w", err)
	}
	select {
	case <-s.hello:
	case <-s.exited:
		return nil, s.over()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s.runMu.Lock()
	defer s.runMu.Unlock()
	if !s.Alive() {
		return nil, s.over()
	}
	pc := proto.Command{ID: c.ID, Path: c.GuestPath, Args: c.Args, Dir: c.Dir, Env: c.Env}
	for _, o := range c.Outputs {
		pc.Outputs = append(pc.Outputs, proto.Output{Path: o.Guest, Dir: o.Dir})
	}
	files := c.Files
	if pc.Path == "" {
		pc.Path = guestBinDir + "/" + c.ID
		files = append([]images.File{{Guest: pc.Path, Host: c.Binary, Mode: 0o755, StripDWARF: !s.opts.KeepDWARF}}, files...)
	}
	for _, f := range files {
		sf, err := s.spool.add(f)
		if err != nil {
			s.spool.release(pc.Files)
			if errors.Is(err, errSpoolFull) {
				return nil, ErrSessionOver
			}
			return nil, fmt.Errorf("vmtest: %s for the guest: %w", f.Guest, err)
		}
		pc.Files = append(pc.Files, sf)
	}
	defer s.spool.release(pc.Files)
	job, err := (&proto.Job{Commands: []proto.Command{pc}}).MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("vmtest: %w", err)
	}

	res := &Result{Accel: s.res.Accel, Release: s.res.Release, AgentUptime: s.res.AgentUptime, OutDir: c.OutDir,
		Commands: []CommandResult{{ID: c.ID}}}
	if s.ran == 0 {
		res.Boot = s.res.Boot // the boot is the first command's cost
	}
	s.ran++
	ropts := s.opts
	ropts.Commands = []Command{c.Command}
	ropts.OutDir, ropts.Output = c.OutDir, c.Output
	splats := &splatScanner{}
	// Kernel reports that came between commands (or at boot) are this
	// one's: nothing may go unreported.
	for _, sp := range s.takeSplats() {
		sp.Line = "before this package: " + sp.Line
		res.Splats = append(res.Splats, sp)
	}
	start := time.Now()
	cr := newResultReader(res, ropts, s.key, splats, start)
	cr.hello = true
	consoleFrom := s.consoleSize()
	done := make(chan struct{})
	s.mu.Lock()
	s.cur, s.curDone = cr, done
	w := s.w
	s.mu.Unlock()
	if err := w.WriteFrame(proto.TypeRun, "", job); err != nil {
		s.mu.Lock()
		s.cur = nil
		s.mu.Unlock()
		s.kill()
		return nil, ErrSessionOver
	}

	timer := time.NewTimer(s.opts.Timeout)
	defer timer.Stop()
	var failure *Failure
	select {
	case <-done:
	case <-s.exited:
	case <-timer.C:
		s.kill()
		failure = &Failure{Kind: FailTimeout, Message: fmt.Sprintf("%s did not finish within %s (hung?)", c.ID, s.opts.Timeout)}
	case <-ctx.Done():
		s.kill()
		failure = &Failure{Kind: FailCancelled, Message: "run stopped before " + c.ID + " finished"}
	}
	select {
	case <-done:
	default:
		// The guest is gone (or going): once the boot returned, nothing
		// writes to cr any more.
		<-s.exited
		s.mu.Lock()
		s.cur = nil
		s.mu.Unlock()
		if failure == nil && s.res.Failure != nil {
			f := *s.res.Failure
			if f.Kind == FailNoReport {
				// The boot's account is of its own commands (none).
				f.Message = "guest stopped without reporting while running " + c.ID
			}
			failure = &f
			s.mu.Lock()
			s.blamed = true
			s.mu.Unlock()
		}
		if failure == nil {
			failure = &Failure{Kind: FailNoReport, Message: "guest stopped while running " + c.ID}
		}
		if failure.Console == nil && s.res.Failure != nil {
			failure.Console = s.res.Failure.Console
		}
		res.Failure = failure
	}
	cr.finish()
	res.Duration = res.Boot + time.Since(start)
	// The command's reports: from its kernel log and from the console
	// meanwhile (the same report seen twice counts once).
	seen := map[string]bool{}
	for _, sp := range res.Splats {
		seen[sp.Line] = true
	}
	for _, sp := range append(splats.result(), s.takeSplats()...) {
		if !seen[sp.Line] {
			seen[sp.Line] = true
			res.Splats = append(res.Splats, sp)
		}
	}
	s.copyConsole(consoleFrom, filepath.Join(c.OutDir, "console.log"))
	if err := writeResult(res); err != nil {
		return res, err
	}
	if len(res.ProtocolErrors) > 0 {
		s.kill() // what comes from this guest can no longer be trusted
	}
	return res, nil
}

// takeSplats returns the kernel reports seen on the console or in the kernel
// log between commands since the last call.
func (s *Session) takeSplats() []Splat {
	s.mu.Lock()
	sc := s.splats
	s.mu.Unlock()
	if sc == nil {
		return nil
	}
	all := sc.result()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.taken >= len(all) {
		return nil
	}
	out := all[s.taken:]
	s.taken = len(all)
	return out
}

// over is ErrSessionOver with what is known of why.
func (s *Session) over() error {
	select {
	case <-s.exited:
		if f := s.res.Failure; f != nil {
			return fmt.Errorf("%w: %v", ErrSessionOver, f)
		}
		if s.bootErr != nil {
			return fmt.Errorf("%w: %v", ErrSessionOver, s.bootErr)
		}
	default:
	}
	return ErrSessionOver
}

// Close ends the session: the agent powers off (or QEMU is stopped after a
// grace period) and the boot's results are written. Kernel reports and
// faults that came after the last command, which no command's result
// holds, make its error.
func (s *Session) Close() error {
	select {
	case <-s.hello:
		s.mu.Lock()
		w := s.w
		s.mu.Unlock()
		if w != nil {
			_ = w.WriteFrame(proto.TypeStop, "", nil)
		}
	default:
	}
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.kill()
	}
	s.cancel()
	errs := []error{s.bootErr}
	for _, sp := range s.takeSplats() {
		errs = append(errs, fmt.Errorf("kernel %s after the last package: %s", sp.Kind, sp.Line))
	}
	s.mu.Lock()
	blamed, rr := s.blamed, s.rr
	s.mu.Unlock()
	if f := s.res.Failure; f != nil && !blamed && f.Kind != FailCancelled {
		errs = append(errs, fmt.Errorf("guest failed while no package ran: %v", f))
	}
	if rr != nil {
		for _, f := range s.res.Faults[min(rr.handed, len(s.res.Faults)):] {
			errs = append(errs, fmt.Errorf("guest fault after the last package: %s", f))
		}
	}
	return errors.Join(errs...)
}

// kill stops QEMU and waits for the boot to end.
func (s *Session) kill() {
	s.cancel()
	<-s.exited
}

func (s *Session) consoleSize() int64 {
	st, err := os.Stat(filepath.Join(s.opts.OutDir, "console.log"))
	if err != nil {
		return 0
	}
	return st.Size()
}

// copyConsole copies the session's console from offset on to dst: what the
// console showed while a command ran.
func (s *Session) copyConsole(from int64, dst string) {
	src, err := os.Open(filepath.Join(s.opts.OutDir, "console.log"))
	if err != nil {
		return
	}
	defer src.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return
	}
	defer out.Close()
	_, _ = io.Copy(out, io.NewSectionReader(src, from, 1<<62))
}

// errSpoolFull: the spool disk has no room left for a command's files.
var errSpoolFull = errors.New("spool disk full")

// spool is the disk a session's commands' files reach the guest by: the
// host writes each file at the next aligned offset while QEMU has the file
// open read-only, and the guest reads it with O_DIRECT.
type spool struct {
	path string
	f    *os.File
	mu   sync.Mutex
	next int64
}

func newSpool(path string) (*spool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("vmtest: spool disk: %w", err)
	}
	head := make([]byte, proto.SpoolAlign)
	copy(head, proto.SpoolMagic)
	if _, err := f.WriteAt(head, 0); err == nil {
		err = f.Truncate(spoolSize)
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("vmtest: spool disk: %w", err)
	}
	return &spool{path: path, f: f, next: proto.SpoolAlign}, nil
}

func (sp *spool) add(file images.File) (proto.SpoolFile, error) {
	data, mode, err := file.Contents()
	if err != nil {
		return proto.SpoolFile{}, err
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	off := sp.next
	if off+int64(len(data)) > spoolSize {
		return proto.SpoolFile{}, errSpoolFull
	}
	if _, err := sp.f.WriteAt(data, off); err != nil {
		return proto.SpoolFile{}, err
	}
	sp.next = (off + int64(len(data)) + proto.SpoolAlign - 1) / proto.SpoolAlign * proto.SpoolAlign
	return proto.SpoolFile{Path: file.Guest, Mode: uint32(mode), Offset: off, Size: int64(len(data)),
		CRC32C: crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))}, nil
}

// release gives the blocks of files back to the host's file system.
func (sp *spool) release(files []proto.SpoolFile) {
	for _, f := range files {
		n := (f.Size + proto.SpoolAlign - 1) / proto.SpoolAlign * proto.SpoolAlign
		_ = unix.Fallocate(int(sp.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, f.Offset, n)
	}
}

// full reports whether less than 1 GiB is left.
func (sp *spool) full() bool {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.next > spoolSize-1<<30
}

func (sp *spool) remove() {
	sp.f.Close()
	os.Remove(sp.path)
}
