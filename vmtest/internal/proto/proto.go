// Package proto is the framing used on the guest's dedicated result port.
//
// The guest agent writes frames to a serial port that carries nothing else, so
// kernel printk noise on the console can never be mistaken for a result. Each
// frame is a text header followed by a binary payload:
//
//	@VMT1 <type> <name> <length> <crc32>\n<payload>\n
//
// type and name are tokens without spaces (name is "-" when unused), length is
// the payload size in bytes and crc32 is the IEEE checksum of the payload in
// hex. The length lets payloads hold any bytes; the checksum catches a payload
// damaged in transit. A reader that meets bytes outside a frame skips to the
// next header and reports how much it skipped, so one damaged frame costs only
// itself.
package proto

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"strings"
	"sync"
)

// Magic starts every frame header.
const Magic = "@VMT1 "

// MaxPayload bounds a frame's payload so a corrupt length cannot make the
// reader allocate without limit.
const MaxPayload = 64 << 20

// Frame types written by the guest agent.
const (
	TypeHello  = "hello" // Hello: the agent started
	TypeStart  = "start" // command <name> is starting
	TypeOutput = "out"   // raw stdout/stderr bytes of command <name>
	TypeExit   = "exit"  // Exit: command <name> finished
	TypeFile   = "file"  // an artifact; name is its path-escaped relative path
	TypeDmesg  = "dmesg" // a piece of the guest kernel log, streamed in order
	TypeLog    = "log"   // a message of the agent itself (module load errors and the like)
	TypeDone   = "done"  // the agent finished; nothing follows
)

// Frame is one message on the result port.
type Frame struct {
	Type    string
	Name    string
	Payload []byte
}

// ErrCorrupt reports bytes on the port that were not part of a valid frame.
var ErrCorrupt = errors.New("corrupt data on result port")

// CorruptError tells how many bytes were skipped and why.
type CorruptError struct {
	Skipped int
	Reason  string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("%s: skipped %d bytes: %s", ErrCorrupt, e.Skipped, e.Reason)
}

// Unwrap lets errors.Is match ErrCorrupt.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// Writer writes frames. It is safe for concurrent use.
type Writer struct {
	mu sync.Mutex
	w  io.Writer
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

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
	// strconv rather than fmt: the guest agent's first frame is on the
	// path to the first test, and every code path run for the first time
	// costs translation under emulation.
	b := make([]byte, 0, len(Magic)+len(typ)+len(name)+24+len(payload))
	b = append(b, Magic...)
	b = append(b, typ...)
	b = append(b, ' ')
	b = append(b, name...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(len(payload)), 10)
	b = append(b, ' ')
	sum := strconv.FormatUint(uint64(crc32.ChecksumIEEE(payload)), 16)
	for i := len(sum); i < 8; i++ {
		b = append(b, '0')
	}
	b = append(b, sum...)
	b = append(b, '\n')
	b = append(b, payload...)
	b = append(b, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err := w.w.Write(b)
	return err
}

func checkToken(s string) error {
	if s == "" {
		return errors.New("empty token")
	}
	if strings.ContainsAny(s, " \t\r\n") || len(s) > 4096 {
		return fmt.Errorf("invalid token %q", s)
	}
	return nil
}

// Reader reads frames.
type Reader struct {
	r *bufio.Reader
}

// NewReader returns a Reader on r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 64<<10)} }

// Next returns the next frame. Bytes before a valid frame are skipped and
// reported as a *CorruptError together with the frame that follows them, so
// callers can log the damage and keep the frame. At the end of the input it
// returns io.EOF, or io.ErrUnexpectedEOF when the input stops inside a frame.
func (r *Reader) Next() (Frame, error) {
	skipped := 0
	reason := ""
	note := func(n int, why string) {
		skipped += n
		if reason == "" {
			reason = why
		}
	}
	result := func(f Frame) (Frame, error) {
		if skipped > 0 {
			return f, &CorruptError{Skipped: skipped, Reason: reason}
		}
		return f, nil
	}
	for {
		line, err := r.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			note(len(line), "line without frame header")
			continue
		}
		if err != nil {
			if len(line) == 0 {
				if skipped > 0 {
					return Frame{}, &CorruptError{Skipped: skipped, Reason: reason}
				}
				return Frame{}, io.EOF
			}
			if i := bytes.Index(line, []byte(Magic)); i >= 0 {
				return Frame{}, fmt.Errorf("frame header cut short: %w", io.ErrUnexpectedEOF)
			}
			note(len(line), "trailing bytes without frame header")
			return Frame{}, &CorruptError{Skipped: skipped, Reason: reason}
		}
		i := bytes.Index(line, []byte(Magic))
		if i < 0 {
			note(len(line), "bytes outside a frame")
			continue
		}
		if i > 0 {
			note(i, "bytes outside a frame")
		}
		typ, name, n, sum, herr := parseHeader(string(line[i+len(Magic) : len(line)-1]))
		if herr != nil {
			note(len(line)-i, herr.Error())
			continue
		}
		payload := make([]byte, n+1)
		if _, err := io.ReadFull(r.r, payload); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return Frame{}, fmt.Errorf("frame %s %s: payload cut short: %w", typ, name, io.ErrUnexpectedEOF)
			}
			return Frame{}, err
		}
		if payload[n] != '\n' || crc32.ChecksumIEEE(payload[:n]) != sum {
			// The header was real but its payload was damaged. Resume the
			// search right after the header: the damaged payload may hold the
			// start of the next frame if bytes were lost.
			note(len(line)-i, fmt.Sprintf("frame %s %s failed its checksum", typ, name))
			r.r = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(payload), r.r), 64<<10)
			continue
		}
		if name == "-" {
			name = ""
		}
		return result(Frame{Type: typ, Name: name, Payload: payload[:n]})
	}
}

func parseHeader(h string) (typ, name string, n int, sum uint32, err error) {
	f := strings.Split(h, " ")
	if len(f) != 4 {
		return "", "", 0, 0, fmt.Errorf("malformed frame header %q", truncate(h, 80))
	}
	n, err = strconv.Atoi(f[2])
	if err != nil || n < 0 || n > MaxPayload {
		return "", "", 0, 0, fmt.Errorf("bad frame length %q", truncate(f[2], 20))
	}
	s, err := strconv.ParseUint(f[3], 16, 32)
	if err != nil || len(f[3]) != 8 {
		return "", "", 0, 0, fmt.Errorf("bad frame checksum %q", truncate(f[3], 20))
	}
	return f[0], f[1], n, uint32(s), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
