package vmtest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/skbstore/skbstore/vmtest/internal/proto"
)

// Limits cap what one boot may send to the host. The guest is not trusted:
// without caps a test (or a kernel) printing in a loop fills the host's disk.
// A boot that reaches a cap fails, with a message naming the cap.
type Limits struct {
	// OutputBytes bounds the bytes of all commands' output plus the guest
	// kernel log, and separately the console log; 0 means 256 MiB.
	OutputBytes int64
	// ArtifactBytes bounds the bytes of all artifacts; 0 means 256 MiB.
	ArtifactBytes int64
	// ArtifactFiles bounds the number of artifacts; 0 means 10000.
	ArtifactFiles int
}

// Flags that set the limits, named in the failures they cause.
const (
	FlagMaxOutput        = "-max-output"
	FlagMaxArtifacts     = "-max-artifacts"
	FlagMaxArtifactFiles = "-max-artifact-files"
)

func (l Limits) withDefaults() Limits {
	if l.OutputBytes <= 0 {
		l.OutputBytes = 256 << 20
	}
	if l.ArtifactBytes <= 0 {
		l.ArtifactBytes = 256 << 20
	}
	if l.ArtifactFiles <= 0 {
		l.ArtifactFiles = 10000
	}
	return l
}

func (l Limits) proto() proto.Limits {
	return proto.Limits{Output: l.OutputBytes, ArtifactBytes: l.ArtifactBytes, ArtifactFiles: l.ArtifactFiles}
}

// Bounds on the guest's bookkeeping, so that no count from the guest makes
// the host's memory grow without limit.
const (
	maxMessages      = 1000   // agent log and fault messages kept
	maxMessageLen    = 4096   // bytes kept of each
	maxProtoErrors   = 100    // protocol errors kept (the rest are counted)
	maxArtifactDepth = 32     // directories in an artifact's path
	maxArtifactPath  = 1024   // bytes in an artifact's path
	maxFailLine      = 256    // bytes kept of a "--- FAIL" line
	outputFileSuffix = ".out" // a command's output is OutDir/<ID>.out
	artifactsDir     = "artifacts"
)

// resultReader turns frames from the result port into a Result, writing
// output and artifacts to disk as they arrive so a run that dies midway keeps
// everything the guest had sent. Everything in a frame is hostile input: a
// frame that does not fit the job (a command that was not asked for, a second
// exit, an artifact outside its command's directory) is a protocol error,
// which fails the run, and nothing from the guest names a file outside
// OutDir.
type resultReader struct {
	res    *Result
	opts   Options
	limits Limits
	key    []byte
	start  time.Time
	splats *splatScanner

	next    int // index in res.Commands of the command expected to start next
	current int // index of the running command, -1 when none
	out     *os.File
	fail    failScanner
	hello   bool
	done    bool

	output    int64 // bytes of output and kernel log received
	artBytes  int64
	artFiles  int
	artifact  *os.File // the artifact being received
	artName   string   // its frame name
	artDrop   bool     // its pieces are dropped (over a cap)
	dmesg     *os.File
	dmesgTail []byte // an unfinished last line, for the splat scanner

	moreErrors int    // protocol errors past maxProtoErrors
	cutShort   string // the last frame, cut short when the guest stopped
	forged     int    // frames that failed authentication
	skipped    int64  // bytes that were not authentic frames
	capped     map[string]bool

	// A Session's boot routes the frames and damage of the running
	// command to that command's own reader (sink), and hears of the
	// agent's hello and of the command's exit.
	sink    func() *resultReader
	onHello func()
	onExit  func(*resultReader)
	// Faults of the guest's set-up (before the first command) and those
	// handed to a command so far.
	bootFaults, handed int
	handedBoot         bool
}

func newResultReader(res *Result, opts Options, key []byte, splats *splatScanner, start time.Time) *resultReader {
	return &resultReader{res: res, opts: opts, limits: opts.Limits.withDefaults(), key: key, splats: splats,
		start: start, current: -1, capped: map[string]bool{}}
}

func (r *resultReader) read(conn io.Reader) {
	pr := proto.NewReader(conn, r.key)
	for {
		f, err := pr.Next()
		t := r
		if r.sink != nil {
			if s := r.sink(); s != nil {
				t = s
			}
		}
		if err != nil {
			var ce *proto.CorruptError
			if errors.As(err, &ce) {
				t.forged += ce.Forged
				t.skipped += int64(ce.Skipped)
			}
			if errors.Is(err, io.EOF) {
				return
			}
			if errors.Is(err, io.ErrUnexpectedEOF) {
				// The guest stopped in the middle of a frame: it died or was
				// stopped, which the boot's failure reports.
				r.cutShort = err.Error()
				return
			}
			t.protoErr("%v", err)
			if !errors.Is(err, proto.ErrCorrupt) && !errors.Is(err, proto.ErrSequence) {
				return
			}
		}
		if f.Type == "" {
			continue
		}
		if t != r && f.Type == proto.TypeStart {
			r.handFaults(t)
		}
		t.handle(f)
		switch {
		case t == r && f.Type == proto.TypeHello && r.hello && r.onHello != nil:
			r.onHello()
		case t != r && f.Type == proto.TypeExit && t.current < 0 && r.onExit != nil:
			r.onExit(t)
		}
	}
}

func (r *resultReader) handle(f proto.Frame) {
	if r.done {
		r.protoErr("frame %s %.80q after the agent said it was done", f.Type, f.Name)
		return
	}
	if !r.hello && f.Type != proto.TypeHello {
		r.protoErr("frame %s %.80q before the agent's hello", f.Type, f.Name)
		return
	}
	switch f.Type {
	case proto.TypeFile, proto.TypeOutFile, proto.TypeStart, proto.TypeExit, proto.TypeDone:
		// The file being received is complete. Kernel log and agent
		// messages come from other goroutines of the agent and may fall
		// between its pieces.
		r.closeArtifact()
	}
	switch f.Type {
	case proto.TypeHello:
		if r.hello {
			r.protoErr("second hello")
			return
		}
		var h proto.Hello
		if err := h.UnmarshalBinary(f.Payload); err != nil {
			r.protoErr("hello: %v", err)
			return
		}
		r.hello = true
		r.res.Release = truncate(h.Release, 256)
		r.res.AgentUptime = h.Uptime
		r.res.Boot = time.Since(r.start)
	case proto.TypeStart:
		if r.current >= 0 || r.next >= len(r.res.Commands) || r.res.Commands[r.next].ID != f.Name {
			r.protoErr("start of command %.80q out of turn", f.Name)
			return
		}
		r.current = r.next
		r.next++
		r.fail = failScanner{}
		out, err := os.Create(filepath.Join(r.res.OutDir, f.Name+outputFileSuffix))
		if err != nil {
			r.protoErr("save output of %s: %v", f.Name, err)
			return
		}
		r.out = out
	case proto.TypeOutput:
		c := r.running(f)
		if c == nil {
			return
		}
		if r.res.FirstOutput == 0 {
			r.res.FirstOutput = time.Since(r.start)
		}
		if !r.spendOutput(len(f.Payload)) {
			return
		}
		r.fail.write(f.Payload)
		if r.opts.Output != nil {
			_, _ = r.opts.Output.Write(f.Payload)
		}
		if r.out != nil {
			if _, err := r.out.Write(f.Payload); err != nil {
				r.protoErr("save output of %s: %v", c.ID, err)
			}
		}
		c.OutputBytes += int64(len(f.Payload))
	case proto.TypeExit:
		c := r.running(f)
		if c == nil {
			return
		}
		var ex proto.Exit
		if err := ex.UnmarshalBinary(f.Payload); err != nil {
			r.protoErr("exit of %s: %v", f.Name, err)
			return
		}
		ex.Error = truncate(ex.Error, maxMessageLen)
		c.Exit = &ex
		r.fail.flush()
		c.FailLine = r.fail.line
		r.current = -1
		if r.out != nil {
			r.out.Close()
			r.out = nil
		}
	case proto.TypeFile:
		r.startArtifact(f)
	case proto.TypeOutFile:
		r.startOutFile(f)
	case proto.TypeFileMore:
		if r.artDrop && f.Name == r.artName {
			return
		}
		if r.artifact == nil || f.Name != r.artName {
			r.protoErr("artifact piece %.80q without its start", f.Name)
			return
		}
		r.writeArtifact(f.Payload)
	case proto.TypeDmesg:
		if !r.spendOutput(len(f.Payload)) {
			return
		}
		r.writeDmesg(f.Payload)
	case proto.TypeLog:
		r.res.Log = appendMessage(r.res.Log, f.Payload)
		if r.opts.Progress != nil {
			fmt.Fprintf(r.opts.Progress, "guest: %s\n", truncate(string(f.Payload), maxMessageLen))
		}
	case proto.TypeFault:
		r.res.Faults = appendMessage(r.res.Faults, f.Payload)
	case proto.TypeDone:
		if r.current >= 0 || r.next < len(r.res.Commands) {
			r.protoErr("the agent said it was done before every command had finished")
		}
		r.done = true
	default:
		r.protoErr("unknown frame type %.40q", f.Type)
	}
}

// handFaults gives a session's command the faults of the guest's set-up
// (each command gets them, as each boot of its own would have) and those
// the agent reported since the last command.
func (r *resultReader) handFaults(t *resultReader) {
	if !r.handedBoot {
		r.handedBoot = true
		r.bootFaults, r.handed = len(r.res.Faults), len(r.res.Faults)
	}
	t.res.Faults = append(t.res.Faults, r.res.Faults[:r.bootFaults]...)
	for _, f := range r.res.Faults[r.handed:] {
		t.res.Faults = append(t.res.Faults, "before this package: "+f)
	}
	r.handed = len(r.res.Faults)
}

// running returns the running command if the frame names it.
func (r *resultReader) running(f proto.Frame) *CommandResult {
	if r.current < 0 || r.res.Commands[r.current].ID != f.Name {
		r.protoErr("frame %s for command %.80q, which is not running", f.Type, f.Name)
		return nil
	}
	return &r.res.Commands[r.current]
}

// spendOutput counts n bytes of output or kernel log against the cap.
func (r *resultReader) spendOutput(n int) bool {
	r.output += int64(n)
	if r.output <= r.limits.OutputBytes {
		return true
	}
	r.capFault(FlagMaxOutput, "output and kernel log over the cap of %d bytes per boot (%s): the rest was dropped", r.limits.OutputBytes, FlagMaxOutput)
	return false
}

// capFault records once that a cap was reached.
func (r *resultReader) capFault(flag, format string, args ...any) {
	if r.capped[flag] {
		return
	}
	r.capped[flag] = true
	r.res.Faults = appendMessage(r.res.Faults, []byte(fmt.Sprintf(format, args...)))
}

// artifactName checks a name from a file frame: a relative path below the
// running command's own directory, of bounded length and depth.
func (r *resultReader) artifactName(n string) (string, error) {
	name, err := proto.UnescapeName(n)
	if err != nil {
		return "", err
	}
	if r.current < 0 {
		return "", errors.New("no command is running")
	}
	if err := checkRelPath(name); err != nil {
		return "", err
	}
	if id := r.res.Commands[r.current].ID; !strings.HasPrefix(name, id+"/") {
		return "", fmt.Errorf("not below the directory of the running command %s", id)
	}
	return name, nil
}

// checkRelPath accepts a path from the guest only as a clean relative path
// of bounded length and depth, which cannot leave the directory it is
// joined to.
func checkRelPath(p string) error {
	switch {
	case len(p) > maxArtifactPath:
		return fmt.Errorf("path longer than %d bytes", maxArtifactPath)
	case strings.Count(p, "/") > maxArtifactDepth:
		return fmt.Errorf("path deeper than %d directories", maxArtifactDepth)
	case strings.ContainsRune(p, 0) || !filepath.IsLocal(p) || filepath.Clean(p) != p:
		return errors.New("not a clean relative path")
	}
	return nil
}

func (r *resultReader) startArtifact(f proto.Frame) {
	name, err := r.artifactName(f.Name)
	if err != nil {
		r.protoErr("artifact %.80q refused: %v", f.Name, err)
		return
	}
	// O_EXCL: a name sent twice does not overwrite, and nothing that is
	// already there (a directory, a link) is followed.
	if r.receive(f, filepath.Join(r.res.OutDir, artifactsDir, name), os.O_EXCL) {
		r.res.Files = append(r.res.Files, name)
	}
}

// startOutFile receives a file the running command wrote for the host:
// a frame names it by its index among the command's outputs, so the host
// writes only where it asked for a file, or below a directory it asked for.
func (r *resultReader) startOutFile(f proto.Frame) {
	if r.current < 0 {
		r.protoErr("output file %.80q while no command runs", f.Name)
		return
	}
	var outs []Output
	if r.current < len(r.opts.Commands) {
		outs = r.opts.Commands[r.current].Outputs
	}
	idx, rest, sub := strings.Cut(f.Name, "/")
	i, err := strconv.Atoi(idx)
	if err != nil || i < 0 || i >= len(outs) || sub != outs[i].Dir {
		r.protoErr("output file %.80q that the job did not ask for", f.Name)
		return
	}
	path := outs[i].Host
	if sub {
		rel, err := proto.UnescapeName(rest)
		if err == nil {
			err = checkRelPath(rel)
		}
		if err != nil {
			r.protoErr("output file %.80q refused: %v", f.Name, err)
			return
		}
		path = filepath.Join(path, rel)
	}
	// O_TRUNC: the file of an earlier run at a path the user named (a
	// profile) is replaced, as go test would; O_NOFOLLOW: not through a link.
	r.receive(f, path, os.O_TRUNC|syscall.O_NOFOLLOW)
}

// receive opens path for the pieces of the file that f starts, within the
// caps, and reports whether it did.
func (r *resultReader) receive(f proto.Frame, path string, flag int) bool {
	if r.artFiles >= r.limits.ArtifactFiles {
		r.artName, r.artDrop = f.Name, true
		r.capFault(FlagMaxArtifactFiles, "files over the cap of %d per boot (%s): the rest were dropped", r.limits.ArtifactFiles, FlagMaxArtifactFiles)
		return false
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		r.protoErr("save %s: %v", path, err)
		return false
	}
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|flag, 0o644)
	if err != nil {
		r.protoErr("save %s: %v", path, err)
		return false
	}
	r.artFiles++
	r.artifact, r.artName = out, f.Name
	r.writeArtifact(f.Payload)
	return true
}

func (r *resultReader) writeArtifact(p []byte) {
	r.artBytes += int64(len(p))
	if r.artBytes > r.limits.ArtifactBytes {
		name := r.artName
		r.closeArtifact()
		r.artName, r.artDrop = name, true
		r.capFault(FlagMaxArtifacts, "artifacts over the cap of %d bytes per boot (%s): the rest were dropped", r.limits.ArtifactBytes, FlagMaxArtifacts)
		return
	}
	if _, err := r.artifact.Write(p); err != nil {
		r.protoErr("save artifact: %v", err)
	}
}

func (r *resultReader) closeArtifact() {
	if r.artifact != nil {
		r.artifact.Close()
	}
	r.artifact, r.artName, r.artDrop = nil, "", false
}

func (r *resultReader) writeDmesg(p []byte) {
	if r.dmesg == nil {
		f, err := os.Create(filepath.Join(r.res.OutDir, "dmesg.log"))
		if err != nil {
			r.protoErr("save dmesg.log: %v", err)
			return
		}
		r.dmesg = f
	}
	if _, err := r.dmesg.Write(p); err != nil {
		r.protoErr("save dmesg.log: %v", err)
	}
	// The guest streams its kernel log in pieces, in order; a line may be
	// split between two.
	data := append(r.dmesgTail, p...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		r.splats.line(string(data[:i]))
		data = data[i+1:]
	}
	if len(data) > 4096 {
		data = data[:0] // a line that long is no kernel record; drop it
	}
	r.dmesgTail = append(r.dmesgTail[:0], data...)
}

func (r *resultReader) protoErr(format string, args ...any) {
	if len(r.res.ProtocolErrors) >= maxProtoErrors {
		r.moreErrors++
		return
	}
	r.res.ProtocolErrors = append(r.res.ProtocolErrors, truncate(fmt.Sprintf(format, args...), maxMessageLen))
}

func (r *resultReader) finish() {
	r.closeArtifact()
	if r.out != nil {
		r.out.Close()
	}
	if r.dmesg != nil {
		if len(r.dmesgTail) > 0 {
			r.splats.line(string(r.dmesgTail))
		}
		r.dmesg.Close()
	}
	if r.current >= 0 {
		// The guest died while the command ran: what it printed is all
		// there is, and it may already say why.
		r.fail.flush()
		r.res.Commands[r.current].FailLine = r.fail.line
	}
	if r.moreErrors > 0 {
		r.res.ProtocolErrors = append(r.res.ProtocolErrors, fmt.Sprintf("and %d more protocol errors", r.moreErrors))
	}
	if r.skipped > 0 {
		msg := fmt.Sprintf("%d bytes on the result port were not the agent's frames", r.skipped)
		if r.forged > 0 {
			msg += fmt.Sprintf(", among them %d frame headers that failed authentication", r.forged)
		}
		msg += ": something in the guest other than the agent wrote to the port, or the port damaged them"
		r.res.ProtocolErrors = append([]string{msg}, r.res.ProtocolErrors...)
	}
}

// stage says how far the guest got, for failure messages.
func (r *resultReader) stage() string {
	s := r.stageOnly()
	if r.cutShort != "" {
		s += " (its last " + r.cutShort + ")"
	}
	return s
}

func (r *resultReader) stageOnly() string {
	switch {
	case !r.hello:
		return "; the guest agent never started"
	case r.current >= 0:
		return "; while running " + r.res.Commands[r.current].ID
	case r.done:
		return ""
	}
	var ran []string
	for _, c := range r.res.Commands {
		if c.Exit != nil {
			ran = append(ran, c.ID)
		}
	}
	if len(ran) == 0 {
		return "; before the first command finished"
	}
	return "; after " + strings.Join(ran, ", ")
}

func appendMessage(list []string, p []byte) []string {
	if len(list) >= maxMessages {
		return list
	}
	return append(list, truncate(string(p), maxMessageLen))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// failScanner watches a Go test binary's output for the lines the testing
// package prints when a test fails ("--- FAIL: TestX" and the final "FAIL"),
// so that an exit status of 0 can be checked against them. Under go test
// -json those lines start with test2json's marker byte, 0x16.
type failScanner struct {
	partial []byte // the start of the current line, bounded
	line    string // the first failure line seen
}

// flush checks a last line that has no newline.
func (s *failScanner) flush() {
	if s.line == "" {
		s.check(s.partial)
	}
	s.partial = s.partial[:0]
}

func (s *failScanner) write(p []byte) {
	for len(p) > 0 && s.line == "" {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if room := maxFailLine - len(s.partial); room > 0 {
			s.partial = append(s.partial, chunk[:min(room, len(chunk))]...)
		}
		if i < 0 {
			return
		}
		s.check(s.partial)
		s.partial = s.partial[:0]
		p = p[i+1:]
	}
}

func (s *failScanner) check(l []byte) {
	l = bytes.TrimSuffix(bytes.TrimPrefix(l, []byte{0x16}), []byte{'\r'})
	if bytes.HasPrefix(l, []byte("--- FAIL: ")) || bytes.Equal(l, []byte("FAIL")) {
		s.line = string(l)
	}
}
