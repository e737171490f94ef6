package vmtest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/skbstore/vmtest/vmtest/internal/proto"
)

// resultReader turns frames from the result port into a Result, writing
// output and artifacts to disk as they arrive so a run that dies midway keeps
// everything the guest had sent.
type resultReader struct {
	res     *Result
	opts    Options
	start   time.Time
	files   map[string]*os.File // output files by name, kept open while frames arrive
	dmesg   strings.Builder
	done    bool
	hello   bool
	current string // command running now, for messages about where a guest died
}

func newResultReader(res *Result, opts Options, start time.Time) *resultReader {
	return &resultReader{res: res, opts: opts, start: start, files: map[string]*os.File{}}
}

func (r *resultReader) read(conn io.Reader) {
	pr := proto.NewReader(conn)
	for {
		f, err := pr.Next()
		if err != nil {
			var ce *proto.CorruptError
			if errors.As(err, &ce) {
				r.res.ProtocolErrors = append(r.res.ProtocolErrors, ce.Error())
			} else {
				if !errors.Is(err, io.EOF) {
					r.res.ProtocolErrors = append(r.res.ProtocolErrors, err.Error())
				}
				return
			}
		}
		if f.Type != "" {
			r.handle(f)
		}
	}
}

func (r *resultReader) command(id string) *CommandResult {
	for i := range r.res.Commands {
		if r.res.Commands[i].ID == id {
			return &r.res.Commands[i]
		}
	}
	r.res.Commands = append(r.res.Commands, CommandResult{ID: id})
	return &r.res.Commands[len(r.res.Commands)-1]
}

func (r *resultReader) handle(f proto.Frame) {
	switch f.Type {
	case proto.TypeHello:
		var h proto.Hello
		if err := h.UnmarshalBinary(f.Payload); err != nil {
			r.protoErr("hello: %v", err)
			return
		}
		r.hello = true
		r.res.Release = h.Release
		r.res.AgentUptime = h.Uptime
		r.res.Boot = time.Since(r.start)
	case proto.TypeStart:
		r.command(f.Name)
		r.current = f.Name
	case proto.TypeOutput:
		if r.res.FirstOutput == 0 {
			r.res.FirstOutput = time.Since(r.start)
		}
		c := r.command(f.Name)
		c.Output = append(c.Output, f.Payload...)
		if r.opts.Output != nil {
			_, _ = r.opts.Output.Write(f.Payload)
		}
		r.file(f.Name + ".out").Write(f.Payload)
	case proto.TypeExit:
		var ex proto.Exit
		if err := ex.UnmarshalBinary(f.Payload); err != nil {
			r.protoErr("exit of %s: %v", f.Name, err)
			return
		}
		r.command(f.Name).Exit = &ex
		r.current = ""
	case proto.TypeFile:
		name, err := proto.UnescapeName(f.Name)
		if err != nil || !filepath.IsLocal(name) {
			r.protoErr("artifact with bad name %q", f.Name)
			return
		}
		p := filepath.Join(r.res.OutDir, "artifacts", name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
			err = os.WriteFile(p, f.Payload, 0o644)
		}
		if err != nil {
			r.protoErr("save artifact %s: %v", name, err)
			return
		}
		r.res.Files = append(r.res.Files, name)
	case proto.TypeDmesg:
		// The guest streams its kernel log in pieces, in order.
		r.dmesg.Write(f.Payload)
		r.file("dmesg.log").Write(f.Payload)
	case proto.TypeLog:
		r.res.Log = append(r.res.Log, string(f.Payload))
		if r.opts.Progress != nil {
			fmt.Fprintf(r.opts.Progress, "guest: %s\n", f.Payload)
		}
	case proto.TypeDone:
		r.done = true
	default:
		r.protoErr("unknown frame type %q", f.Type)
	}
}

// file returns the output file name in OutDir, created on first use.
func (r *resultReader) file(name string) io.Writer {
	if f, ok := r.files[name]; ok {
		return f
	}
	f, err := os.Create(filepath.Join(r.res.OutDir, name))
	if err != nil {
		r.protoErr("save %s: %v", name, err)
		return io.Discard
	}
	r.files[name] = f
	return f
}

func (r *resultReader) protoErr(format string, args ...any) {
	r.res.ProtocolErrors = append(r.res.ProtocolErrors, fmt.Sprintf(format, args...))
}

func (r *resultReader) finish() {
	for _, f := range r.files {
		f.Close()
	}
}

// stage says how far the guest got, for failure messages.
func (r *resultReader) stage() string {
	switch {
	case !r.hello:
		return "; the guest agent never started"
	case r.current != "":
		return "; while running " + r.current
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
