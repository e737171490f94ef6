//go:build linux

package guest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// modprobePath is where the kernel runs modprobe (kernel.modprobe) and
// where tests find it on PATH.
const modprobePath = "/sbin/modprobe"

// serveModprobe makes this program the guest's modprobe: the kernel runs
// it for request_module ("rtnl-link-geneve", "cls_flower"...), as it runs
// kmod's on a host, and it loads from the modules disk.
func serveModprobe() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(modprobePath), 0o755); err != nil {
		return err
	}
	os.Remove(modprobePath) // a u-root image may have its own
	if err := os.Symlink(exe, modprobePath); err != nil {
		return err
	}
	return os.WriteFile("/proc/sys/kernel/modprobe", []byte(modprobePath+"\n"), 0o644)
}

// Modprobe is the guest's modprobe command: the subset of kmod's the kernel
// and tests use. "modprobe [-q] [-v] [-n] [-a] [-r] [--] NAME [PARAM=VALUE...]"
// loads the module NAME names (a module name or an alias from
// modules.alias) with what it depends on. It returns the exit status.
func Modprobe(args []string, stderr io.Writer) int {
	var quiet, verbose, dryRun, all, remove bool
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		a := args[0]
		args = args[1:]
		if a == "--" {
			break
		}
		long := map[string]*bool{"--quiet": &quiet, "--verbose": &verbose, "--dry-run": &dryRun, "--all": &all, "--remove": &remove,
			"--use-blacklist": new(bool), "--syslog": new(bool)}
		if p, ok := long[a]; ok {
			*p = true
			continue
		}
		for _, c := range a[1:] {
			switch c {
			case 'q':
				quiet = true
			case 'v':
				verbose = true
			case 'n':
				dryRun = true
			case 'a':
				all = true
			case 'r':
				remove = true
			case 'b', 's':
			default:
				fmt.Fprintf(stderr, "modprobe: unknown option %q (this is vmtest's modprobe: -q -v -n -a -r)\n", a)
				return 1
			}
		}
	}
	if len(args) == 0 {
		fmt.Fprintln(stderr, "modprobe: no module given")
		return 1
	}
	names, params := args[:1], ""
	if all || remove {
		names = args
	} else {
		params = strings.Join(args[1:], " ")
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		fmt.Fprintf(stderr, "modprobe: %v\n", err)
		return 1
	}
	m := &modprober{dir: "/lib/modules/" + unix.ByteSliceToString(u.Release[:]), dryRun: dryRun, out: io.Discard}
	if verbose || dryRun {
		m.out = os.Stdout
	}
	code := 0
	for _, n := range names {
		var err error
		if remove {
			err = m.remove(n)
		} else {
			err = m.probe(n, params)
		}
		if err != nil {
			if !quiet {
				fmt.Fprintf(stderr, "modprobe: %v\n", err)
			}
			code = 1
		}
		if !dryRun {
			kmsgf("modprobe %s: %s", n, errString(err, "done"))
		}
	}
	return code
}

// modprober resolves and loads modules from one modules directory.
type modprober struct {
	dir    string
	dryRun bool
	out    io.Writer // what it loads, for -v and -n

	dep     map[string][]string // module name -> its file, then what it needs (modules.dep)
	builtin map[string]bool
	softPre map[string][]string // module name -> modules to load first (modules.softdep)
	loaded  map[string]bool
}

// normalize is kmod's: '-' and '_' are the same in module names.
func normalize(name string) string {
	return strings.ReplaceAll(name, "-", "_")
}

func (m *modprober) probe(name, params string) error {
	if err := m.readIndex(); err != nil {
		return err
	}
	mods, err := m.resolve(name)
	if err != nil {
		return err
	}
	var errs []error
	for _, mod := range mods {
		if err := m.load(mod, params); err != nil {
			errs = append(errs, err)
		}
	}
	// An alias several modules match is served when one loads.
	if len(errs) == len(mods) && len(errs) > 0 {
		return errors.Join(errs...)
	}
	return nil
}

// resolve names the modules name stands for: itself, or those whose
// aliases match it; none for a module built into the kernel.
func (m *modprober) resolve(name string) ([]string, error) {
	n := normalize(name)
	if _, ok := m.dep[n]; ok {
		return []string{n}, nil
	}
	if m.builtin[n] {
		return nil, nil
	}
	mods, builtin, err := m.aliases(name)
	if err != nil {
		return nil, err
	}
	if len(mods) == 0 && !builtin {
		return nil, fmt.Errorf("module %s not found in %s", name, m.dir)
	}
	return mods, nil
}

// aliases reads modules.alias (only when a name is not a module's: it is
// the largest index) for the modules whose alias patterns match name, and
// whether one of them is built into the kernel.
func (m *modprober) aliases(name string) (mods []string, builtin bool, err error) {
	f, err := os.Open(filepath.Join(m.dir, "modules.alias"))
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	want := normalize(name)
	seen := map[string]bool{}
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) != 3 || fields[0] != "alias" {
			continue
		}
		if ok, _ := path.Match(normalize(fields[1]), want); !ok {
			continue
		}
		switch mod := normalize(fields[2]); {
		case m.dep[mod] != nil && !seen[mod]:
			seen[mod] = true
			mods = append(mods, mod)
		case m.builtin[mod]:
			builtin = true
		}
	}
	return mods, builtin, s.Err()
}

// load loads mod after what it needs; params go to mod itself.
func (m *modprober) load(mod, params string) error {
	for _, pre := range m.softPre[mod] {
		if _, ok := m.dep[pre]; ok {
			_ = m.load(pre, "") // soft: the module works without it
		}
	}
	files := m.dep[mod]
	for i := len(files) - 1; i >= 0; i-- {
		name := moduleFileName(files[i])
		if m.loaded[name] {
			continue
		}
		p := ""
		if i == 0 {
			p = params
		}
		if err := m.insert(filepath.Join(m.dir, files[i]), p); err != nil {
			return fmt.Errorf("load %s: %w", files[i], err)
		}
		m.loaded[name] = true
	}
	return nil
}

func (m *modprober) insert(file, params string) error {
	fmt.Fprintf(m.out, "insmod %s %s\n", file, params)
	if m.dryRun {
		return nil
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if strings.HasSuffix(file, ".xz") || strings.HasSuffix(file, ".zst") || strings.HasSuffix(file, ".gz") {
		// The kernel decompresses (CONFIG_MODULE_DECOMPRESS, which the
		// kernels that ship compressed modules have).
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), params, flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

func (m *modprober) remove(name string) error {
	if m.dryRun {
		return nil
	}
	if err := unix.DeleteModule(normalize(name), unix.O_NONBLOCK); err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}

// moduleFileName is the module name of a path in modules.dep.
func moduleFileName(p string) string {
	b := path.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return normalize(b)
}

// readIndex reads modules.dep, modules.builtin and modules.softdep, and
// which modules are loaded already.
func (m *modprober) readIndex() error {
	if m.dep != nil {
		return nil
	}
	m.dep, m.builtin, m.softPre, m.loaded = map[string][]string{}, map[string]bool{}, map[string][]string{}, map[string]bool{}
	err := eachLine(filepath.Join(m.dir, "modules.dep"), func(l string) {
		file, deps, ok := strings.Cut(l, ":")
		if !ok {
			return
		}
		m.dep[moduleFileName(file)] = append([]string{file}, strings.Fields(deps)...)
	})
	if err != nil {
		return fmt.Errorf("%w (is this kernel's modules directory in the guest?)", err)
	}
	_ = eachLine(filepath.Join(m.dir, "modules.builtin"), func(l string) {
		m.builtin[moduleFileName(l)] = true
	})
	_ = eachLine(filepath.Join(m.dir, "modules.softdep"), func(l string) {
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != "softdep" {
			return
		}
		pre := false
		for _, w := range f[2:] {
			switch w {
			case "pre:":
				pre = true
			case "post:":
				pre = false
			default:
				if pre {
					m.softPre[normalize(f[1])] = append(m.softPre[normalize(f[1])], normalize(w))
				}
			}
		}
	})
	// Loaded modules (not built-in ones, which have no initstate).
	ents, _ := os.ReadDir("/sys/module")
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join("/sys/module", e.Name(), "initstate")); err == nil {
			m.loaded[e.Name()] = true
		}
	}
	return nil
}

func eachLine(file string, fn func(string)) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		if l := strings.TrimSpace(s.Text()); l != "" && !strings.HasPrefix(l, "#") {
			fn(l)
		}
	}
	return s.Err()
}

// kmsgf writes a line to the kernel log (it reaches the host's dmesg.log), so
// that what the kernel asked for and got is on record.
func kmsgf(format string, args ...any) {
	writeKmsg("", "vmtest-guest: "+fmt.Sprintf(format, args...))
}

// writeKmsg writes one line to the kernel log; prio is its "<N>" level
// prefix, "" for the default level.
func writeKmsg(prio, line string) {
	f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s%s\n", prio, line)
}

func errString(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}
