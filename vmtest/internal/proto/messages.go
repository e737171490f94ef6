package proto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// JobPath is where the host puts the encoded Job in the guest's initramfs.
const JobPath = "/vmtest/job"

// DefaultPath is the guest's PATH: u-root's commands, and the agent as
// modprobe in /sbin.
const DefaultPath = "/bin:/bbin:/usr/bin:/sbin:/usr/sbin"

// ArtifactsRoot is the guest directory whose files are shipped back to the host.
const ArtifactsRoot = "/vmtest/artifacts"

// The messages the guest reads or writes (Job, Hello, Exit) are encoded as
// NUL-terminated strings rather than JSON: under software emulation the first
// encoding/json call in the agent costs 20 ms of code translation, more than
// the rest of its start-up. NUL cannot occur in arguments, environment
// strings or paths, so no escaping is needed. The JSON tags are for result
// files the host writes.

// Job tells the guest agent what to run.
type Job struct {
	// Commands run one after the other.
	Commands []Command `json:"commands"`
	// Modules are module files to load before the first command, in load
	// order, as paths inside the guest.
	Modules []string `json:"modules,omitempty"`
	// Env is added to every command's environment.
	Env []string `json:"env,omitempty"`
	// ResultPort is the device of the result port, /dev/ttyS1 by default.
	ResultPort string `json:"result_port,omitempty"`
	// Console is the device of the kernel's console (console= on the
	// command line), /dev/ttyS0 by default: interactive commands use it.
	Console string `json:"console,omitempty"`
	// ExitPort, when not 0, is the I/O port of QEMU's isa-debug-exit
	// device: once everything is sent, the agent writes ExitValue there
	// (through /dev/port) and QEMU exits at once, without the kernel's
	// device shutdown, which costs a boot about 0.16 s under emulation
	// (x86-64; NVMe controllers). Power-off remains the fallback.
	ExitPort int64 `json:"exit_port,omitempty"`
	// Key tags the frames of this boot (see Writer). The agent reads it and
	// removes the job file before any command runs.
	Key []byte `json:"-"`
	// Limits are the caps the host enforces; the agent keeps within them
	// rather than sending what the host would refuse.
	Limits Limits `json:"limits"`
	// Disks are file system images the host attached, mounted by the agent
	// after the modules of Modules are loaded and before any command runs.
	Disks []Disk `json:"disks,omitempty"`
	// Serve keeps the guest up after Commands: the agent then runs the
	// commands the host sends in TypeRun frames, one at a time, until a
	// TypeStop frame (one boot for many test binaries).
	Serve bool `json:"serve,omitempty"`
}

// Frame types the host writes to a serving agent (Job.Serve).
const (
	// TypeRun carries a Job holding the one command to run next, with
	// its Files on the spool disk and its own Env.
	TypeRun = "run"
	// TypeStop ends the serving: the agent reports TypeDone and powers off.
	TypeStop = "stop"
)

// SpoolMagic starts the spool disk of a serving guest: a raw drive the host
// appends each command's files to while the guest runs (the guest reads them
// with O_DIRECT, past its page cache). File data start at SpoolAlign
// boundaries.
const SpoolMagic = "VMTSPOOL"

// SpoolAlign is the alignment of files on the spool disk.
const SpoolAlign = 4096

// Disk is an ext4 image the host attaches as an NVMe drive (built into
// every kernel of the matrix, as ext4 is, so no module is needed). Files on
// it are read when a program opens them: a large module tree, GOROOT or all
// of a kernel's modules cost a boot nothing until used.
type Disk struct {
	// Label is the file system's volume label, by which the agent finds
	// the drive (device names depend on probe order).
	Label string `json:"label"`
	// Dir is where the agent mounts it.
	Dir      string `json:"dir"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// Binds are absolute paths whose copy on the disk (at the same path
	// below Dir) the agent bind-mounts at that path of the root, so that a
	// module checked out at /tmp/x is at /tmp/x in the guest too.
	Binds []string `json:"binds,omitempty"`
}

// Limits cap what one boot may send to the host. Zero means no cap.
type Limits struct {
	// Output bounds the bytes of all commands' output and the kernel log.
	Output int64 `json:"output_bytes,omitempty"`
	// ArtifactBytes bounds the bytes of all artifacts.
	ArtifactBytes int64 `json:"artifact_bytes,omitempty"`
	// ArtifactFiles bounds the number of artifacts.
	ArtifactFiles int `json:"artifact_files,omitempty"`
}

// Command is one program the guest agent runs.
type Command struct {
	// ID names the command in frames and artifacts; a token without spaces.
	ID   string   `json:"id"`
	Path string   `json:"path"`
	Args []string `json:"args,omitempty"`
	// Dir is the working directory; "/" when empty.
	Dir string `json:"dir,omitempty"`
	// Outputs are files the command writes that go back to the host
	// (profiles, coverage): the agent makes their directories before the
	// command runs and sends them after it, as TypeOutFile frames named
	// after their index here.
	Outputs []Output `json:"outputs,omitempty"`
	// Terminal runs the command on the guest's console, its controlling
	// terminal, instead of sending its output in frames: an interactive
	// shell (vmtest shell), whose keystrokes come in on the console.
	Terminal bool `json:"terminal,omitempty"`
	// ShellOnFail, when the command fails, runs ShellPath on the console
	// in its directory and environment before its results are sent, and
	// waits for the person there to leave it.
	ShellOnFail string `json:"shell_on_fail,omitempty"`
	// Env is added to this command's environment, after Job.Env.
	Env []string `json:"env,omitempty"`
	// Files are on the spool disk: the agent puts each at its Path before
	// the command runs and removes it after (a serving agent's commands).
	Files []SpoolFile `json:"files,omitempty"`
}

// SpoolFile is a file of a command on the spool disk.
type SpoolFile struct {
	Path   string `json:"path"`
	Mode   uint32 `json:"mode"`
	Offset int64  `json:"offset"`
	Size   int64  `json:"size"`
	// CRC32C (Castagnoli) is of its bytes: what the agent read is checked.
	CRC32C uint32 `json:"crc32c"`
}

// Output is a file, or a directory of files, a command writes for the host.
type Output struct {
	Path string `json:"path"`
	Dir  bool   `json:"dir,omitempty"`
}

// Hello is the payload of a TypeHello frame.
type Hello struct {
	Release string  `json:"release"` // uname -r
	Version string  `json:"version"` // uname -v
	Uptime  float64 `json:"uptime"`  // seconds since the guest kernel started
}

// Exit is the payload of a TypeExit frame.
type Exit struct {
	// Code is the exit status; -1 when the command could not start or was
	// killed by a signal.
	Code     int           `json:"code"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration"`
}

const jobMagic = "vmtest-job-2"

// ExitValue is what the agent writes to Job.ExitPort; QEMU then exits with
// status ExitValue<<1|1 (171), which the host recognises.
const ExitValue = 0x55

// PowerOffLine is what the agent prints on the console right before a fast
// exit: the host reads the power-off time from it, as it does from the
// kernel's "reboot: Power down".
const PowerOffLine = "vmtest-guest: power off"

// MarshalBinary encodes j for JobPath.
func (j *Job) MarshalBinary() ([]byte, error) {
	e := &encoder{}
	e.put(jobMagic)
	if j.ResultPort != "" {
		e.put("port", j.ResultPort)
	}
	if j.Console != "" {
		e.put("console", j.Console)
	}
	if j.ExitPort != 0 {
		e.put("exit_port", strconv.FormatInt(j.ExitPort, 10))
	}
	if len(j.Key) > 0 {
		e.put("key", hex.EncodeToString(j.Key))
	}
	if j.Serve {
		e.put("serve")
	}
	e.put("limits", strconv.FormatInt(j.Limits.Output, 10), strconv.FormatInt(j.Limits.ArtifactBytes, 10), strconv.Itoa(j.Limits.ArtifactFiles))
	for _, m := range j.Modules {
		e.put("module", m)
	}
	for _, v := range j.Env {
		e.put("env", v)
	}
	for _, d := range j.Disks {
		ro := "rw"
		if d.ReadOnly {
			ro = "ro"
		}
		e.put("disk", d.Label, d.Dir, ro, strconv.Itoa(len(d.Binds)))
		e.put(d.Binds...)
	}
	for _, c := range j.Commands {
		e.put("cmd", c.ID, c.Path, c.Dir, strconv.Itoa(len(c.Args)))
		e.put(c.Args...)
		if c.Terminal {
			e.put("terminal")
		}
		if c.ShellOnFail != "" {
			e.put("shell_on_fail", c.ShellOnFail)
		}
		for _, o := range c.Outputs {
			kind := "file"
			if o.Dir {
				kind = "dir"
			}
			e.put("output", kind, o.Path)
		}
		for _, v := range c.Env {
			e.put("cmd_env", v)
		}
		for _, f := range c.Files {
			e.put("spool_file", f.Path, strconv.FormatUint(uint64(f.Mode), 8), strconv.FormatInt(f.Offset, 10), strconv.FormatInt(f.Size, 10), strconv.FormatUint(uint64(f.CRC32C), 16))
		}
	}
	return e.bytes()
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (j *Job) UnmarshalBinary(b []byte) error {
	d, err := newDecoder(b)
	if err != nil {
		return fmt.Errorf("job: %w", err)
	}
	if d.next() != jobMagic {
		return errors.New("job: not a vmtest job (version mismatch between host and guest agent?)")
	}
	*j = Job{}
	for d.more() {
		switch tag := d.next(); tag {
		case "port":
			j.ResultPort = d.next()
		case "console":
			j.Console = d.next()
		case "exit_port":
			v, err := strconv.ParseInt(d.next(), 10, 64)
			if err != nil || v < 0 || v > 0xffff {
				return errors.New("job: bad exit port")
			}
			j.ExitPort = v
		case "key":
			k, err := hex.DecodeString(d.next())
			if err != nil {
				return fmt.Errorf("job: bad key: %w", err)
			}
			j.Key = k
		case "serve":
			j.Serve = true
		case "cmd_env":
			v := d.next()
			if len(j.Commands) == 0 {
				return errors.New("job: cmd_env before any command")
			}
			c := &j.Commands[len(j.Commands)-1]
			c.Env = append(c.Env, v)
		case "spool_file":
			f := SpoolFile{Path: d.next()}
			mode, merr := strconv.ParseUint(d.next(), 8, 32)
			off, oerr := strconv.ParseInt(d.next(), 10, 64)
			size, serr := strconv.ParseInt(d.next(), 10, 64)
			sum, cerr := strconv.ParseUint(d.next(), 16, 32)
			f.Mode, f.Offset, f.Size, f.CRC32C = uint32(mode), off, size, uint32(sum)
			if len(j.Commands) == 0 || errors.Join(merr, oerr, serr, cerr) != nil || off < 0 || size < 0 || off%SpoolAlign != 0 {
				return fmt.Errorf("job: bad spool file %q", f.Path)
			}
			c := &j.Commands[len(j.Commands)-1]
			c.Files = append(c.Files, f)
		case "limits":
			var errs [3]error
			j.Limits.Output, errs[0] = strconv.ParseInt(d.next(), 10, 64)
			j.Limits.ArtifactBytes, errs[1] = strconv.ParseInt(d.next(), 10, 64)
			j.Limits.ArtifactFiles, errs[2] = strconv.Atoi(d.next())
			if err := errors.Join(errs[:]...); err != nil {
				return fmt.Errorf("job: bad limits: %w", err)
			}
		case "module":
			j.Modules = append(j.Modules, d.next())
		case "env":
			j.Env = append(j.Env, d.next())
		case "disk":
			k := Disk{Label: d.next(), Dir: d.next()}
			ro := d.next()
			n, err := strconv.Atoi(d.next())
			if err != nil || n < 0 || n > len(d.s) || ro != "ro" && ro != "rw" {
				return fmt.Errorf("job: disk %q: bad entry", k.Label)
			}
			k.ReadOnly = ro == "ro"
			for range n {
				k.Binds = append(k.Binds, d.next())
			}
			j.Disks = append(j.Disks, k)
		case "cmd":
			c := Command{ID: d.next(), Path: d.next(), Dir: d.next()}
			n, err := strconv.Atoi(d.next())
			if err != nil || n < 0 || n > len(d.s) {
				return fmt.Errorf("job: command %q: bad argument count", c.ID)
			}
			for range n {
				c.Args = append(c.Args, d.next())
			}
			j.Commands = append(j.Commands, c)
		case "shell_on_fail":
			sh := d.next()
			if len(j.Commands) == 0 {
				return errors.New("job: shell_on_fail before any command")
			}
			j.Commands[len(j.Commands)-1].ShellOnFail = sh
		case "terminal":
			if len(j.Commands) == 0 {
				return errors.New("job: terminal before any command")
			}
			j.Commands[len(j.Commands)-1].Terminal = true
		case "output":
			kind, path := d.next(), d.next()
			if len(j.Commands) == 0 || kind != "file" && kind != "dir" {
				return fmt.Errorf("job: bad output %q %q", kind, path)
			}
			c := &j.Commands[len(j.Commands)-1]
			c.Outputs = append(c.Outputs, Output{Path: path, Dir: kind == "dir"})
		default:
			return fmt.Errorf("job: unknown entry %q", tag)
		}
	}
	if d.short {
		return errors.New("job: truncated")
	}
	return nil
}

// MarshalBinary encodes h for a TypeHello frame.
func (h *Hello) MarshalBinary() ([]byte, error) {
	e := &encoder{}
	e.put("release", h.Release, "version", h.Version, "uptime_us", strconv.FormatInt(int64(h.Uptime*1e6), 10))
	return e.bytes()
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (h *Hello) UnmarshalBinary(b []byte) error {
	return decodeFields(b, func(k, v string) error {
		var err error
		switch k {
		case "release":
			h.Release = v
		case "version":
			h.Version = v
		case "uptime_us":
			var us int64
			us, err = strconv.ParseInt(v, 10, 64)
			h.Uptime = float64(us) / 1e6
		}
		return err
	})
}

// MarshalBinary encodes x for a TypeExit frame.
func (x *Exit) MarshalBinary() ([]byte, error) {
	e := &encoder{}
	e.put("code", strconv.Itoa(x.Code), "error", x.Error, "duration", strconv.FormatInt(int64(x.Duration), 10))
	return e.bytes()
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (x *Exit) UnmarshalBinary(b []byte) error {
	return decodeFields(b, func(k, v string) error {
		var err error
		switch k {
		case "code":
			x.Code, err = strconv.Atoi(v)
		case "error":
			x.Error = v
		case "duration":
			var ns int64
			ns, err = strconv.ParseInt(v, 10, 64)
			x.Duration = time.Duration(ns)
		}
		return err
	})
}

type encoder struct {
	b   bytes.Buffer
	err error
}

func (e *encoder) put(s ...string) {
	for _, v := range s {
		if strings.IndexByte(v, 0) >= 0 && e.err == nil {
			e.err = fmt.Errorf("string %q holds a NUL byte", v)
		}
		e.b.WriteString(v)
		e.b.WriteByte(0)
	}
}

func (e *encoder) bytes() ([]byte, error) { return e.b.Bytes(), e.err }

type decoder struct {
	s     []string
	short bool
}

func newDecoder(b []byte) (*decoder, error) {
	if len(b) == 0 || b[len(b)-1] != 0 {
		return nil, errors.New("truncated or not NUL-terminated")
	}
	return &decoder{s: strings.Split(string(b[:len(b)-1]), "\x00")}, nil
}

func (d *decoder) more() bool { return len(d.s) > 0 }

// next returns the next string, or "" (and remembers it) past the end.
func (d *decoder) next() string {
	if len(d.s) == 0 {
		d.short = true
		return ""
	}
	v := d.s[0]
	d.s = d.s[1:]
	return v
}

// decodeFields calls set for each key and value; unknown keys are for newer
// agents and are ignored.
func decodeFields(b []byte, set func(k, v string) error) error {
	d, err := newDecoder(b)
	if err != nil {
		return err
	}
	for d.more() {
		k, v := d.next(), d.next()
		if d.short {
			return fmt.Errorf("field %q without value", k)
		}
		if err := set(k, v); err != nil {
			return fmt.Errorf("field %s: %w", k, err)
		}
	}
	return nil
}

// EscapeName turns a relative file path into a frame name token: bytes
// other than letters, digits and "-._~/" become %XX.
func EscapeName(p string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~/", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// UnescapeName reverses EscapeName.
func UnescapeName(n string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(n); i++ {
		if n[i] != '%' {
			b.WriteByte(n[i])
			continue
		}
		if i+2 >= len(n) {
			return "", fmt.Errorf("bad escape in name %q", n)
		}
		v, err := strconv.ParseUint(n[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape in name %q", n)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}
