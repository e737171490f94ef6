//go:build linux

package guest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"hash/crc32"

	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/vmtest/internal/proto"
)

// serve runs the commands the host sends on the result port (Job.Serve)
// one at a time, until it says stop. Each command's files come from the
// spool disk; after it, its files and artifacts are removed and every
// process it left is killed, so that the next command starts as it would in
// a guest of its own, but for the kernel's state.
func (a *agent) serve(port *os.File, job *proto.Job) error {
	a.serving = true
	r := proto.NewReader(port, job.Key)
	var spool *os.File
	defer func() {
		if spool != nil {
			spool.Close()
		}
	}()
	for {
		f, err := r.Next()
		if err != nil {
			if !errors.Is(err, proto.ErrCorrupt) && !errors.Is(err, proto.ErrSequence) {
				return fmt.Errorf("read the host's frames: %w", err)
			}
			// Damage before a frame is reported with the frame.
			a.logf("from the host: %v", err)
			if f.Type == "" {
				continue
			}
		}
		switch f.Type {
		case proto.TypeStop:
			return nil
		case proto.TypeRun:
		default:
			a.logf("from the host: unknown frame %q", f.Type)
			continue
		}
		var one proto.Job
		if err := one.UnmarshalBinary(f.Payload); err != nil || len(one.Commands) != 1 {
			a.faultf("from the host: a run frame without one command (%v)", err)
			continue
		}
		c := one.Commands[0]
		a.resetCaps()
		timeline("run " + c.ID)
		if spool == nil && len(c.Files) > 0 {
			if spool, err = openSpool(diskWait); err != nil {
				a.failCommand(c, err)
				continue
			}
		}
		if err := placeFiles(spool, c.Files); err != nil {
			a.failCommand(c, err)
			removeFiles(c.Files)
			continue
		}
		timeline("placed " + c.ID)
		a.runCommand(c, append(job.Env, c.Env...))
		removeFiles(c.Files)
		timeline("ran " + c.ID)
	}
}

// resetCaps starts a command's share of the caps: a serving guest's caps
// are per command, as each command had a boot of its own.
func (a *agent) resetCaps() {
	a.output.Store(0)
	a.outputOver.Store(false)
	a.artBytes, a.artFiles, a.filesOver = 0, 0, false
}

// failCommand reports a command that could not start.
func (a *agent) failCommand(c proto.Command, err error) {
	_ = a.w.WriteFrame(proto.TypeStart, c.ID, nil)
	b, _ := (&proto.Exit{Code: -1, Error: err.Error()}).MarshalBinary()
	_ = a.w.WriteFrame(proto.TypeExit, c.ID, b)
}

// openSpool finds the spool disk among the NVMe drives by its magic and
// opens it for direct reads: the host writes it while the guest runs, and
// the guest's page cache (readahead of then empty blocks) must not answer.
func openSpool(wait time.Duration) (*os.File, error) {
	buf, err := alignedBuf(proto.SpoolAlign)
	if err != nil {
		return nil, fmt.Errorf("spool buffer: %w", err)
	}
	defer unix.Munmap(buf)
	var spool *os.File
	found := pollNVMe(wait, func(devs []string) bool {
		for _, dev := range devs {
			f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
			if err != nil {
				continue
			}
			if _, err := f.ReadAt(buf, 0); err == nil && bytes.HasPrefix(buf, []byte(proto.SpoolMagic)) {
				spool = f
				return true
			}
			f.Close()
		}
		return false
	})
	if !found {
		return nil, fmt.Errorf("no spool disk within %s (the kernel found: %s)", wait, blockDevices())
	}
	return spool, nil
}

// alignedBuf returns n bytes aligned for O_DIRECT (a page); free it with
// unix.Munmap.
func alignedBuf(n int) ([]byte, error) {
	return unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

// spoolChunk is how much of the spool one read takes.
const spoolChunk = 1 << 20

// placeFiles copies each file from the spool to its path and checks its
// CRC-32C (the host is trusted: the check is against stale or misplaced
// blocks, and costs half of SHA-256 under emulation).
func placeFiles(spool *os.File, files []proto.SpoolFile) error {
	if len(files) == 0 {
		return nil
	}
	buf, err := alignedBuf(spoolChunk)
	if err != nil {
		return fmt.Errorf("spool buffer: %w", err)
	}
	defer unix.Munmap(buf)
	for _, f := range files {
		if err := placeFile(spool, buf, f); err != nil {
			return fmt.Errorf("file %s from the spool disk: %w", f.Path, err)
		}
	}
	return nil
}

func placeFile(spool *os.File, buf []byte, f proto.SpoolFile) error {
	if !filepath.IsAbs(f.Path) {
		return errors.New("not an absolute path")
	}
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
		return err
	}
	// A new inode: a binary still running from the last command (it was
	// killed, but a library may be mapped by something) is not written.
	_ = os.Remove(f.Path)
	out, err := os.OpenFile(f.Path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, os.FileMode(f.Mode&0o7777))
	if err != nil {
		return err
	}
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	w := io.MultiWriter(out, h)
	for off, left := f.Offset, f.Size; left > 0; {
		n, err := spool.ReadAt(buf, off)
		if n == 0 && err != nil {
			out.Close()
			return fmt.Errorf("read at %d: %w", off, err)
		}
		take := min(int64(n), left)
		if _, err := w.Write(buf[:take]); err != nil {
			out.Close()
			return err
		}
		off += take
		left -= take
	}
	if err := out.Close(); err != nil {
		return err
	}
	if got := h.Sum32(); got != f.CRC32C {
		return fmt.Errorf("CRC-32C %08x, the host sent %08x", got, f.CRC32C)
	}
	return nil
}

func removeFiles(files []proto.SpoolFile) {
	for _, f := range files {
		_ = os.Remove(f.Path)
	}
}

// killStrays kills every process but the agent, its ancestors and kernel
// threads: what a command left behind (a daemon it started with setsid, in
// another namespace) must not run on into the next command.
func killStrays() {
	keep := map[int]bool{os.Getpid(): true, 1: true}
	for p := os.Getppid(); p > 1 && !keep[p]; p = parentOf(p) {
		keep[p] = true
	}
	for range 3 {
		killed := 0
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || keep[pid] || isKernelThread(pid) {
				continue
			}
			if unix.Kill(pid, unix.SIGKILL) == nil {
				killed++
			}
		}
		if killed == 0 {
			return
		}
		reapOrphans()
		time.Sleep(5 * time.Millisecond)
	}
}

// procStat returns the fields of /proc/pid/stat after the command name.
func procStat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

func parentOf(pid int) int {
	f := procStat(pid)
	if len(f) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(f[1])
	return p
}

// isKernelThread reads PF_KTHREAD from the process's flags.
func isKernelThread(pid int) bool {
	f := procStat(pid)
	if len(f) < 7 {
		return true // gone, or unreadable: leave it
	}
	flags, err := strconv.ParseUint(f[6], 10, 64)
	return err != nil || flags&0x00200000 != 0
}
