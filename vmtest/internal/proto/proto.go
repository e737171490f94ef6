// Package proto is the framing used on the guest's dedicated result port.
//
// The guest agent writes frames to a serial port that carries nothing else, so
// kernel printk noise on the console can never be mistaken for a result. Each
// frame is a text header followed by a binary payload:
//
//	@VMT2 <type> <name> <seq> <length> <header tag> <payload tag>\n<payload>\n
//
// type and name are tokens without spaces (name is "-" when unused), seq
// counts frames from 0, length is the payload size in bytes. The tags are
// HMAC-SHA256 (truncated to 128 bits, in hex) under a key the host makes for
// each boot and gives only to the agent: the header tag covers the header's
// fields, the payload tag the sequence number and the payload.
//
// The guest is not trusted: a test runs as root there and can write to the
// port. Authentication makes a frame it forges (an "exit 0" after a failure,
// a name that climbs out of the results directory) fail its tag instead of
// being believed; the sequence number makes a dropped, replayed or reordered
// frame visible. Checking the header's tag before reading the payload means a
// forged header announcing a large payload cannot swallow the real frames
// that follow it. A reader that meets bytes outside a frame skips to the next
// header and reports how much it skipped, so one damaged frame costs only
// itself.
package proto

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"strings"
	"sync"
)

// Magic starts every frame header.
const Magic = "@VMT2 "

// MaxPayload bounds a frame's payload. Writers split larger data into pieces
// (output, artifacts), so a reader never buffers more than this for a frame.
const MaxPayload = 1 << 20

// MaxName bounds a frame's name token.
const MaxName = 1024

// KeySize is the size of the per-boot key.
const KeySize = 32

const tagHex = 32 // 128-bit tags, in hex

// Frame types written by the guest agent.
const (
	TypeHello    = "hello" // Hello: the agent started
	TypeStart    = "start" // command <name> is starting
	TypeOutput   = "out"   // raw stdout/stderr bytes of command <name>
	TypeExit     = "exit"  // Exit: command <name> finished
	TypeFile     = "file"  // the first piece of an artifact; name is its path-escaped relative path
	TypeFileMore = "more"  // the next piece of the file named, which the previous frame carried
	TypeOutFile  = "ofile" // the first piece of a command's output file: name is "<index>" or "<index>/<escaped path>" in a directory output
	TypeDmesg    = "dmesg" // a piece of the guest kernel log, streamed in order
	TypeLog      = "log"   // a message of the agent itself, for information
	TypeFault    = "fault" // a problem of the guest set-up that fails the run (a module did not load...)
	TypeDone     = "done"  // the agent finished; nothing follows
)

// Frame is one message on the result port.
type Frame struct {
	Type    string
	Name    string
	Seq     uint64
	Payload []byte
}

// ErrCorrupt reports bytes on the port that were not part of a valid frame:
// damage in transit, or something other than the agent writing to the port.
var ErrCorrupt = errors.New("corrupt data on result port")

// CorruptError tells how many bytes were skipped and why.
type CorruptError struct {
	Skipped int
	Reason  string
	// Forged counts frames whose header looked right but whose tag did not
	// match: written by something without the boot's key.
	Forged int
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("%s: skipped %d bytes: %s", ErrCorrupt, e.Skipped, e.Reason)
}

// Unwrap lets errors.Is match ErrCorrupt.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// ErrSequence reports an authentic frame out of order: frames were lost,
// replayed or reordered.
var ErrSequence = errors.New("result port frames out of sequence")

// tagger computes frame tags under one key.
type tagger struct {
	mac hash.Hash
	sum []byte
}

func newTagger(key []byte) tagger {
	return tagger{mac: hmac.New(sha256.New, key), sum: make([]byte, 0, sha256.Size)}
}

// header tags the header fields, as they appear in the header.
func (t *tagger) header(fields []byte) []byte {
	t.mac.Reset()
	t.mac.Write([]byte("h"))
	t.mac.Write(fields)
	return t.hex()
}

// payload tags seq and the payload.
func (t *tagger) payload(seq uint64, p []byte) []byte {
	t.mac.Reset()
	var b [9]byte
	b[0] = 'p'
	for i := range 8 {
		b[1+i] = byte(seq >> (8 * i))
	}
	t.mac.Write(b[:])
	t.mac.Write(p)
	return t.hex()
}

func (t *tagger) hex() []byte {
	t.sum = t.mac.Sum(t.sum[:0])
	out := make([]byte, tagHex)
	hex.Encode(out, t.sum[:tagHex/2])
	return out
}

// Writer writes frames. It is safe for concurrent use.
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	tag tagger
	seq uint64
}

// NewWriter returns a Writer on w that tags frames with key.
func NewWriter(w io.Writer, key []byte) *Writer { return &Writer{w: w, tag: newTagger(key)} }

// WriteFrame writes one frame in a single Write call.
func (w *Writer) WriteFrame(typ, name string, payload []byte) error {
	if err := checkToken(typ); err != nil {
		return fmt.Errorf("frame type: %w", err)
	}
	if name == "" {
		name = "-"
	}
	if err := checkToken(name); err != nil {
		return fmt.Errorf("frame name: %w", err)
	}
	if len(payload) > MaxPayload {
		return fmt.Errorf("frame %s %s: payload of %d bytes exceeds %d", typ, name, len(payload), MaxPayload)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// strconv rather than fmt: the guest agent's first frame is on the
	// path to the first test, and every code path run for the first time
	// costs translation under emulation.
	b := make([]byte, 0, len(Magic)+len(typ)+len(name)+2*tagHex+48+len(payload))
	b = append(b, Magic...)
	fields := len(b)
	b = append(b, typ...)
	b = append(b, ' ')
	b = append(b, name...)
	b = append(b, ' ')
	b = strconv.AppendUint(b, w.seq, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(len(payload)), 10)
	ht := w.tag.header(b[fields:])
	b = append(b, ' ')
	b = append(b, ht...)
	b = append(b, ' ')
	b = append(b, w.tag.payload(w.seq, payload)...)
	b = append(b, '\n')
	b = append(b, payload...)
	b = append(b, '\n')
	if _, err := w.w.Write(b); err != nil {
		return err
	}
	w.seq++
	return nil
}

func checkToken(s string) error {
	if s == "" {
		return errors.New("empty token")
	}
	if strings.ContainsAny(s, " \t\r\n") || len(s) > MaxName {
		return fmt.Errorf("invalid token %.80q", s)
	}
	return nil
}

// Reader reads frames.
type Reader struct {
	r    *bufio.Reader
	tag  tagger
	next uint64 // the sequence number expected next
}

// NewReader returns a Reader on r that accepts only frames tagged with key.
func NewReader(r io.Reader, key []byte) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 64<<10), tag: newTagger(key)}
}

// Next returns the next frame. Bytes before a valid frame are skipped and
// reported as a *CorruptError together with the frame that follows them, so
// callers can log the damage and keep the frame. An authentic frame out of
// sequence comes with an error wrapping ErrSequence (a replayed one, with a
// number already seen, is dropped). At the end of the input it returns io.EOF,
// or io.ErrUnexpectedEOF when the input stops inside an authentic frame.
func (r *Reader) Next() (Frame, error) {
	var ce CorruptError
	note := func(n int, why string) {
		ce.Skipped += n
		if ce.Reason == "" {
			ce.Reason = why
		}
	}
	for {
		line, err := r.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			note(len(line), "line without frame header")
			continue
		}
		if err != nil {
			if len(line) > 0 {
				note(len(line), "trailing bytes without frame header")
			}
			if ce.Skipped > 0 {
				return Frame{}, &ce
			}
			return Frame{}, io.EOF
		}
		i := bytes.Index(line, []byte(Magic))
		if i < 0 {
			note(len(line), "bytes outside a frame")
			continue
		}
		if i > 0 {
			note(i, "bytes outside a frame")
		}
		h := line[i+len(Magic) : len(line)-1]
		f, n, ptag, herr := r.parseHeader(h)
		if herr != nil {
			note(len(line)-i, herr.Error())
			if errors.Is(herr, errForged) {
				ce.Forged++
			}
			continue
		}
		payload := make([]byte, n+1)
		if _, err := io.ReadFull(r.r, payload); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return Frame{}, fmt.Errorf("frame %s %s: payload cut short: %w", f.Type, f.Name, io.ErrUnexpectedEOF)
			}
			return Frame{}, err
		}
		if payload[n] != '\n' || !hmac.Equal(r.tag.payload(f.Seq, payload[:n]), ptag) {
			// An authentic header with a damaged payload: resume the search
			// right after the header, the payload may hold the next frame if
			// bytes were lost.
			note(len(line)-i, fmt.Sprintf("frame %s %s: payload failed its tag", f.Type, f.Name))
			r.r = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(payload), r.r), 64<<10)
			continue
		}
		f.Payload = payload[:n]
		var err2 error
		switch {
		case f.Seq < r.next:
			note(len(line)-i+n+1, fmt.Sprintf("frame %s %s replayed (number %d, expected %d)", f.Type, f.Name, f.Seq, r.next))
			continue
		case f.Seq > r.next:
			err2 = fmt.Errorf("%w: frame %s %s is number %d, expected %d: %d frames lost", ErrSequence, f.Type, f.Name, f.Seq, r.next, f.Seq-r.next)
		}
		r.next = f.Seq + 1
		if ce.Skipped > 0 || ce.Forged > 0 {
			if err2 != nil {
				return f, errors.Join(&ce, err2)
			}
			return f, &ce
		}
		return f, err2
	}
}

var errForged = errors.New("forged frame header")

func (r *Reader) parseHeader(h []byte) (f Frame, n int, ptag []byte, err error) {
	parts := bytes.Split(h, []byte(" "))
	if len(parts) != 6 {
		return f, 0, nil, fmt.Errorf("malformed frame header %.80q", h)
	}
	if len(parts[4]) != tagHex || len(parts[5]) != tagHex {
		return f, 0, nil, fmt.Errorf("malformed frame header %.80q", h)
	}
	fields := h[:len(h)-2*tagHex-2]
	if !hmac.Equal(r.tag.header(fields), parts[4]) {
		return f, 0, nil, fmt.Errorf("%w %.80q: its tag does not match this boot's key", errForged, h)
	}
	// The tag proves the agent wrote these fields; check them anyway.
	f.Type, f.Name = string(parts[0]), string(parts[1])
	if f.Name == "-" {
		f.Name = ""
	}
	f.Seq, err = strconv.ParseUint(string(parts[2]), 10, 64)
	if err != nil {
		return f, 0, nil, fmt.Errorf("bad frame number %.20q", parts[2])
	}
	n, err = strconv.Atoi(string(parts[3]))
	if err != nil || n < 0 || n > MaxPayload {
		return f, 0, nil, fmt.Errorf("bad frame length %.20q", parts[3])
	}
	// A copy: the header lives in the reader's buffer, which reading the
	// payload overwrites.
	return f, n, bytes.Clone(parts[5]), nil
}
