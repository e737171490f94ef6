package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/images"
	"github.com/skbstore/skbstore/vmtest"
)

func execCmd(ctx context.Context, args []string) (int, error) {
	fs := flag.NewFlagSet("vmtest exec", flag.ContinueOnError)
	var f vmFlags
	f.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: vmtest exec [flags] BINARY [ARGS...]\n\n"+
			"Boots the kernel, runs BINARY as root in the guest with ARGS, streams its\n"+
			"output to stdout and exits with its status. If the guest panics, hangs, reports a\n"+
			"kernel splat or dies before the binary finished, it says so on stderr with the last\n"+
			"console lines and exits 1. The binary runs in the same working directory as on the host,\n"+
			"with the files of its Go module (the directory holding go.mod above it, links followed)\n"+
			"at the same paths (on a disk read as files are opened), GOROOT at its path with its bin\n"+
			"first on PATH, all of the kernel's modules loaded on demand by the kernel (modprobe),\n"+
			"and the kernel's config as /boot/config-$(uname -r).\n"+
			"A dynamically linked binary (cgo, -race) gets its ELF interpreter and libraries from the host.\n"+
			"Made for go test: go test -exec \"vmtest exec -kernel 6.1\" ./pkg\n"+
			"Under vmtest run (-boot per-kernel) it hands the binary to the kernel's running guest instead of\n"+
			"booting one.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, nil
		}
		return 2, errUsage
	}
	if err := f.check(); err != nil {
		return 2, err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2, errUsage
	}
	bin, binArgs := fs.Arg(0), fs.Args()[1:]
	libs, err := images.SharedLibraries(bin)
	if err != nil {
		return 1, err
	}
	if sock := os.Getenv(serverEnv); sock != "" && !f.shellOnFail {
		code, fallback, err := execOnServer(sock, &f, bin, binArgs, libs)
		if fallback == "" {
			return code, err
		}
		fmt.Fprintf(os.Stderr, "vmtest: %s: a boot of its own\n", fallback)
	}
	var tty *os.File
	if f.shellOnFail {
		if tty, err = openTTY(); err != nil {
			fmt.Fprintf(os.Stderr, "vmtest: -shell-on-fail ignored: %v\n", err)
		} else {
			defer tty.Close()
			f.extraCommands = []string{shellPackage}
			f.forAPerson()
		}
	}
	p, err := prepare(ctx, &f, os.Stderr)
	if err != nil {
		return 1, err
	}

	id := commandID(bin)
	outDir, keep, err := execOutDir(f.results, runName(id))
	if err != nil {
		return 1, err
	}

	cwd, err := os.Getwd()
	if err != nil {
		return 1, err
	}
	files, shares, err := guestFiles(cwd, &f, p, os.Getenv("VMTEST_RESULTS"))
	if err != nil {
		return 1, err
	}
	outputs, env := testOutputs(binArgs, cwd, os.Getenv)
	files = append(files, libs...)
	opts := f.options(p, p.base)
	opts.Commands = []vmtest.Command{{ID: id, Binary: bin, Args: binArgs, Dir: cwd, Outputs: outputs}}
	opts.Env = env
	opts.Files = files
	opts.Shares = shares
	if tty != nil {
		opts.Commands[0].ShellOnFail = shellCommand
		opts.Stdin, opts.Console = tty, tty
		opts.Append = strings.TrimSpace(opts.Append + " quiet")
	}
	opts.OutDir = outDir
	opts.Output = os.Stdout
	if f.console && tty == nil {
		opts.Console = os.Stderr
	}
	if os.Getenv("VMTEST_VERBOSE") != "" {
		opts.Progress = os.Stderr
	}
	res, err := bootGuest(ctx, &f, p, opts)
	if err != nil {
		return 1, err
	}
	fmt.Fprintf(os.Stderr, "vmtest: kernel %s (%s), accelerator %s, boot %.1fs, total %.1fs\n",
		f.kernel, res.Release, res.Accel, res.Boot.Seconds(), res.Duration.Seconds())
	return reportExec(os.Stderr, res, f.kernel, keep), nil
}

// execOnServer runs the binary in the guest of vmtest run -boot per-kernel
// (guestServer): same directory, outputs, environment and results
// directory as a boot of its own would have.
func execOnServer(sock string, f *vmFlags, bin string, args []string, libs []images.File) (int, string, error) {
	cwd, err := os.Getwd()
	if err != nil {
		return 1, "", err
	}
	id := commandID(bin)
	outDir, keep, err := execOutDir(f.results, runName(id))
	if err != nil {
		return 1, "", err
	}
	outputs, env := testOutputs(args, cwd, os.Getenv)
	req := execRequest{ID: id, Binary: bin, Args: args, Dir: cwd, Env: env, Outputs: outputs, Libs: libs,
		OutDir: outDir, Keep: keep, ModuleRoot: moduleRoot(cwd)}
	code, fallback, err := execViaServer(sock, req, os.Stdout, os.Stderr)
	if fallback != "" {
		// The boot of its own wants an empty results directory.
		os.Remove(outDir)
	}
	return code, fallback, err
}

// openTTY opens the controlling terminal for -shell-on-fail: stdin may be
// /dev/null (go test gives -exec programs none) while a person is there.
func openTTY() (*os.File, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("no terminal: %w", err)
	}
	if _, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS); err != nil {
		tty.Close()
		return nil, fmt.Errorf("no terminal: %w", err)
	}
	return tty, nil
}

// gorootTree is the disk of the Go installation go test runs with (its
// bin/ is first on the PATH it gives us); nil when there is no go command,
// as when vmtest exec runs a binary by itself.
func gorootTree(ctx context.Context, cacheDir string) (*vmtest.DiskTree, error) {
	goroot, err := images.GOROOT(ctx)
	if errors.Is(err, images.ErrNoGo) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return vmtest.GorootDisk(ctx, goroot, cacheDir)
}

// fileFlags are the testing package's flags naming a file it writes.
var fileFlags = map[string]bool{"coverprofile": true, "cpuprofile": true, "memprofile": true,
	"blockprofile": true, "mutexprofile": true, "trace": true}

// guestEnvVars are the host's environment variables the binary sees in the
// guest too: the ones go test sets for it and the Go runtime's own.
var guestEnvVars = []string{"GOCOVERDIR", "GODEBUG", "GOTRACEBACK", "GOMAXPROCS", "GOGC", "GOMEMLIMIT"}

// testOutputs finds the files a test binary's arguments ask it to write
// (profiles, coverage, -test.outputdir for relative names, the coverage
// directory), so that they come back to the same host paths, as go test
// expects; and the environment the binary inherits from go test.
func testOutputs(args []string, cwd string, getenv func(string) string) ([]vmtest.Output, []string) {
	vals := map[string]string{}
	var files []string
	for i := 0; i < len(args); i++ {
		name, val, hasVal := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		if !strings.HasPrefix(args[i], "-") || !strings.HasPrefix(name, "test.") {
			continue
		}
		name = strings.TrimPrefix(name, "test.")
		if !fileFlags[name] && name != "outputdir" && name != "gocoverdir" && name != "fuzz" && name != "fuzzcachedir" {
			continue
		}
		if !hasVal && i+1 < len(args) {
			i++
			val = args[i]
		}
		vals[name] = val
		if fileFlags[name] && val != "" {
			files = append(files, val)
		}
	}
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return filepath.Clean(p)
		}
		return filepath.Join(cwd, p)
	}
	var outs []vmtest.Output
	for _, f := range files {
		// As the testing package does: relative names are in -test.outputdir.
		if !filepath.IsAbs(f) && vals["outputdir"] != "" {
			f = filepath.Join(vals["outputdir"], f)
		}
		outs = append(outs, vmtest.Output{Guest: abs(f), Host: abs(f)})
	}
	var env []string
	for _, k := range guestEnvVars {
		if v := getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	dirs := []string{vals["gocoverdir"], getenv("GOCOVERDIR"), vals["fuzzcachedir"]}
	if vals["fuzz"] != "" {
		// New inputs that fail go to testdata/fuzz/FuzzX of the package,
		// where go test -run finds them next time.
		dirs = append(dirs, filepath.Join(cwd, "testdata", "fuzz"))
	}
	for _, d := range dirs {
		if d != "" && !slices.ContainsFunc(outs, func(o vmtest.Output) bool { return o.Dir && o.Host == abs(d) }) {
			outs = append(outs, vmtest.Output{Guest: abs(d), Host: abs(d), Dir: true})
		}
	}
	return outs, env
}

// guestFiles is what the guest gets besides the binary: the files of the Go
// module around dir (or dir alone outside a module), the paths of -share
// and an OCI -selftests image's objects, each at its own path (shares, on a
// disk), and for the initramfs the kernel's config where tests look for it
// and the C libraries of a program named by -share.
// results, when set, is the run's results directory of a kernel (all the
// kernels' directory is skipped).
func guestFiles(dir string, f *vmFlags, p *prepared, results string) ([]images.File, []vmtest.Share, error) {
	roots := []string{moduleRoot(dir)}
	for _, s := range splitList(f.share) {
		abs, err := filepath.Abs(s)
		if err != nil {
			return nil, nil, err
		}
		if abs == "/" {
			return nil, nil, errors.New("-share /: name the directories the tests need, not the whole host")
		}
		roots = append(roots, abs)
	}
	if p.kernel.Selftests != "" {
		roots = append(roots, p.kernel.Selftests) // an OCI -selftests image's objects
	}
	opts := images.TreeOptions{SkipDirs: []string{".git", ".hg", ".svn", "vmtest-results"}, MaxBytes: int64(f.shareLimit)}
	if results != "" {
		// The whole run's results (every kernel's), when they are kept
		// inside the module.
		opts.SkipPaths = append(opts.SkipPaths, filepath.Dir(results))
	}
	opts.SkipPaths = append(opts.SkipPaths, ignoredDirs(roots[0])...)
	var files []images.File
	var shares []vmtest.Share
	var total int64
	for _, r := range roots {
		fs, size, err := images.Tree(r, opts)
		if errors.Is(err, images.ErrTooBig) {
			return nil, nil, fmt.Errorf("files for the guest under %s: %w; share less, or raise -share-limit (now %s)", r, err, f.shareLimit.String())
		}
		if err != nil {
			return nil, nil, fmt.Errorf("files for the guest under %s: %w", r, err)
		}
		shares = append(shares, vmtest.Share{Path: r, Files: fs})
		if len(fs) == 1 && fs[0].Host == r {
			// A program named by -share (say /bin/bash, for a test that
			// runs it) gets its C libraries too.
			libs, err := images.SharedLibraries(r)
			if err == nil {
				files = append(files, libs...)
			}
		}
		if total += size; total > int64(f.shareLimit) {
			return nil, nil, fmt.Errorf("files for the guest: %d bytes in %s, over -share-limit %s", total, strings.Join(roots, ", "), f.shareLimit.String())
		}
	}
	if p.kernel.Config != "" && p.kernel.Release != "" {
		files = append(files, images.File{Guest: "/boot/config-" + p.kernel.Release, Host: p.kernel.Config})
	}
	return files, shares, nil
}

// ignoredDirs lists the directories git ignores in the checkout holding dir
// (build outputs such as bin/, earlier results): they are not the test's
// files and only make the guest image larger. Outside a git checkout, none.
func ignoredDirs(dir string) []string {
	out, err := exec.Command("git", "-C", dir, "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory").Output()
	if err != nil {
		return nil
	}
	var dirs []string
	for _, p := range strings.Split(string(out), "\x00") {
		if strings.HasSuffix(p, "/") {
			dirs = append(dirs, filepath.Join(dir, p))
		}
	}
	return dirs
}

// moduleRoot returns the directory of the go.mod above dir, or dir.
func moduleRoot(dir string) string {
	for d := dir; ; {
		if st, err := os.Stat(filepath.Join(d, "go.mod")); err == nil && !st.IsDir() {
			return d
		}
		up := filepath.Dir(d)
		if up == d {
			return dir
		}
		d = up
	}
}

// commandID names the guest command after the binary (pkg.test -> pkg).
func commandID(bin string) string {
	return vmtest.CommandID(strings.TrimSuffix(filepath.Base(bin), ".test"))
}

// runName names the results directory of one boot after the package's
// directory relative to where vmtest run started go test, so reports can tell
// which package it was; else after the binary.
func runName(id string) string {
	root := os.Getenv("VMTEST_RUN_ROOT")
	cwd, err := os.Getwd()
	if root == "" || err != nil {
		return id
	}
	rel, err := filepath.Rel(root, cwd)
	if err != nil || rel == "." || !filepath.IsLocal(rel) {
		return id
	}
	return rel
}

// execOutDir picks where one exec keeps its results: -results, else under
// $VMTEST_RESULTS (set by vmtest run), else a temporary directory that is
// removed when everything passed.
func execOutDir(results, id string) (dir string, keep bool, err error) {
	if results == "" {
		if root := os.Getenv("VMTEST_RESULTS"); root != "" {
			results = freshPath(filepath.Join(root, id))
		}
	}
	if results != "" {
		// A guest's files are written exclusively (O_EXCL): an earlier
		// run's would turn this one into a protocol failure, and mixing
		// the two would mislead. Refuse before booting.
		if ents, err := os.ReadDir(results); err == nil && len(ents) > 0 {
			return "", false, fmt.Errorf("-results %s already holds files (%s, ...): give a new or empty directory, so that this run's files do not mix with another's", results, ents[0].Name())
		}
		return results, true, os.MkdirAll(results, 0o755)
	}
	dir, err = os.MkdirTemp("", "vmtest-"+id+"-")
	return dir, false, err
}

// reportExec reports one boot of exec or shell (guestVerdict) and, unless
// keep, removes its results directory after a success or names it after a
// failure.
func reportExec(w io.Writer, res *vmtest.Result, kernel string, keep bool) int {
	code := guestVerdict(w, res, kernel)
	if !keep {
		if code == 0 {
			os.RemoveAll(res.OutDir)
		} else {
			fmt.Fprintf(w, "vmtest: logs kept in %s\n", res.OutDir)
		}
	}
	return code
}

// guestVerdict tells on w what went wrong in the guest and returns the exit
// code.
func guestVerdict(w io.Writer, res *vmtest.Result, kernel string) int {
	code := 0
	if len(res.Commands) > 0 && res.Commands[0].Exit != nil {
		c := res.Commands[0]
		code = c.Exit.Code
		if c.Exit.Error != "" {
			fmt.Fprintf(w, "vmtest: %s\n", c.Exit.Error)
		}
		if code < 0 {
			code = 1
		}
		if code == 0 && c.FailLine != "" {
			fmt.Fprintf(w, "vmtest: the test binary exited 0 but printed %q: counted as a failure\n", c.FailLine)
			code = 1
		}
	}
	for _, l := range res.Log {
		fmt.Fprintf(w, "vmtest: guest: %s\n", l)
	}
	for _, f := range res.Faults {
		fmt.Fprintf(w, "vmtest: guest %s: %s\n", kernel, f)
		code = max(code, 1)
	}
	for i, p := range res.ProtocolErrors {
		if i == 10 {
			fmt.Fprintf(w, "vmtest: result port: %d more errors in %s\n", len(res.ProtocolErrors)-i, filepath.Join(res.OutDir, "result.json"))
			break
		}
		fmt.Fprintf(w, "vmtest: result port: %s\n", p)
	}
	if len(res.ProtocolErrors) > 0 {
		fmt.Fprintf(w, "vmtest: the guest's results cannot be trusted: counted as a failure\n")
		code = max(code, 1)
	}
	for _, s := range res.Splats {
		fmt.Fprintf(w, "vmtest: kernel %s in guest %s: %s\n", s.Kind, kernel, s.Line)
		code = max(code, 1)
	}
	if f := res.Failure; f != nil {
		fmt.Fprintf(w, "vmtest: guest %s failed: %s\n", kernel, f.Error())
		fmt.Fprintf(w, "vmtest: last console lines:\n")
		for _, l := range f.Console {
			fmt.Fprintf(w, "    %s\n", l)
		}
		code = max(code, 1)
	} else if len(res.Commands) > 0 && res.Commands[0].Exit == nil {
		fmt.Fprintf(w, "vmtest: the guest never reported the end of the test\n")
		code = max(code, 1)
	}
	return code
}
