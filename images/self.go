package images

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"os/exec"
	"runtime/debug"
	"strings"

	"debug/elf"
	"encoding/hex"
	"fmt"
	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/uimage/builder"
	"github.com/u-root/uio/llog"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/u-root/mkuimage/cpio"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/u-root/pkg/ldd"
)

// SharedLibraries returns what a dynamically linked program (cgo, -race)
// needs in the guest, which has no C library of its own: its ELF
// interpreter and the libraries it loads, from the host, at the paths the
// loader looks for them. A static program needs none.
func SharedLibraries(path string) ([]File, error) {
	ef, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: not an executable for the guest: %w", path, err)
	}
	dynamic := false
	for _, p := range ef.Progs {
		dynamic = dynamic || p.Type == elf.PT_INTERP
	}
	ef.Close()
	if !dynamic {
		return nil, nil
	}
	libs, err := ldd.List(path)
	if err != nil {
		return nil, fmt.Errorf("%s is dynamically linked and its libraries could not be listed (%w); build it with CGO_ENABLED=0", path, err)
	}
	var files []File
	for _, l := range libs {
		// At the name the loader asks for, with the content of what
		// that name links to on the host.
		files = append(files, File{Guest: l, Host: l, Mode: 0o755})
	}
	return files, nil
}

// selfBase builds (or finds in the cache) a base image whose agent is the
// program self, for a vmtest installed with go install: it needs no source
// and no Go build of the agent at run time. self must act as the agent when
// it runs as PID 1 (vmtest's main does). The image is larger than a built
// one (the whole vmtest program), which costs some unpacking time at each
// boot. The commands (uname, ip...) are u-root's, built once with the Go
// toolchain from the u-root version vmtest was built with (as go install
// would fetch it); where that fails the image has none, and says why.
func selfBase(ctx context.Context, opts BaseOptions, progress io.Writer) (string, error) {
	data, err := os.ReadFile(opts.Self)
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	libs, err := SharedLibraries(opts.Self)
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	cmds := opts.Commands
	if cmds == nil {
		cmds = DefaultCommands
	}
	uroot := urootVersion()
	h := sha256.New()
	fmt.Fprintf(h, "vmtest-self-v2\n%s %q %s\n", uroot, cmds, buildTags)
	h.Write(data)
	for _, l := range libs {
		if st, err := os.Stat(l.Host); err == nil {
			fmt.Fprintf(h, "%s %d %d\n", l.Host, st.Size(), st.ModTime().UnixNano())
		}
	}
	key := hex.EncodeToString(h.Sum(nil))
	kind := "self"
	if len(cmds) > 0 {
		kind += "-cmds"
	}
	path := filepath.Join(opts.CacheDir, "base-"+kind+"-"+key[:24]+".cpio")
	if _, err := os.Stat(path); err == nil {
		now := time.Now()
		_ = os.Chtimes(path, now, now) // in use, for pruneImages
		return path, nil
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	fmt.Fprintf(progress, "building guest image from %s (no source checkout: the vmtest program is the agent)...\n", opts.Self)
	stripped, _ := StripDWARF(data)
	recs, err := cpio.ReadAllRecords(uimage.DefaultRamfs().Reader())
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	recs = append(recs,
		cpio.StaticRecord(stripped, cpio.Info{Name: "bin/vmtest-guest", Mode: cpio.S_IFREG | 0o755, FileSize: uint64(len(stripped)), NLink: 1}),
		cpio.Symlink("init", "bin/vmtest-guest"))
	lrecs, err := records(libs)
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	recs = append(recs, lrecs...)
	tmp, err := os.CreateTemp(opts.CacheDir, "build-*.cpio")
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	defer os.Remove(tmp.Name())
	w := cpio.NewDedupWriter(cpio.Newc.Writer(tmp))
	if err := cpio.WriteRecordsAndDirs(w, recs); err == nil {
		err = cpio.WriteTrailer(w)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	if len(cmds) > 0 {
		withCmds := tmp.Name() + ".cmds"
		defer os.Remove(withCmds)
		err := buildCommands(ctx, opts, uroot, cmds, recs, withCmds, progress)
		switch {
		case ctx.Err() != nil:
			return "", fmt.Errorf("build base image: %w", ctx.Err())
		case err != nil:
			// Kept as the image without commands; the next run tries
			// again (say, once online), and warns again.
			fmt.Fprintf(progress, "vmtest: WARNING: the guest gets no commands (uname, ip, mount...; tests that run them fail): %v\n", err)
			path = filepath.Join(opts.CacheDir, "base-self-"+key[:24]+".cpio")
		default:
			if err := os.Rename(withCmds, tmp.Name()); err != nil {
				return "", fmt.Errorf("base image: %w", err)
			}
		}
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	pruneImages(opts.CacheDir, time.Now().Add(-imageMaxAge))
	return path, nil
}

// urootVersion is the version of u-root this program was built with.
func urootVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/u-root/u-root" {
				if d.Replace != nil {
					return d.Replace.Version
				}
				return d.Version
			}
		}
	}
	return ""
}

// ErrNoGo is returned by GOROOT when there is no go command on PATH.
var ErrNoGo = errors.New("no go command on PATH")

// GOROOT is the Go installation of the go command on PATH (under go test,
// the one running the tests: it puts its bin/ first).
func GOROOT(ctx context.Context) (string, error) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoGo, err)
	}
	out, err := exec.CommandContext(ctx, goCmd, "env", "GOROOT").Output()
	goroot := strings.TrimSpace(string(out))
	if err != nil || goroot == "" {
		return "", fmt.Errorf("go env GOROOT: %v", err)
	}
	return goroot, nil
}

// buildCommands writes to dst the archive recs plus u-root's busybox of
// cmds, built in a scratch module that requires u-root at version.
func buildCommands(ctx context.Context, opts BaseOptions, version string, cmds []string, recs []cpio.Record, dst string, progress io.Writer) error {
	if version == "" || version == "(devel)" {
		return errors.New("this vmtest program does not say which u-root it was built with")
	}
	// u-root's builder runs $GOROOT/bin/go, GOROOT defaulting to this
	// program's, which is unknown when it was built with -trimpath.
	goroot, err := GOROOT(ctx)
	if errors.Is(err, ErrNoGo) {
		return fmt.Errorf("building them needs the go command: %w", err)
	}
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(opts.CacheDir, "cmds-")
	if err != nil {
		return err
	}
	mod := fmt.Sprintf("module vmtest.local/guestcommands\n\ngo 1.22\n\nrequire github.com/u-root/u-root %s\n", version)
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod), 0o644); err != nil {
		os.RemoveAll(dir)
		return err
	}
	base, err := cpio.ArchiveFromRecords(recs)
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	fmt.Fprintf(progress, "building the guest's commands from u-root %s (once)...\n", version)
	env := golang.Default(golang.DisableCGO(), golang.WithGOOS("linux"), golang.WithGOARCH(opts.arch()),
		golang.WithGOROOT(goroot), golang.WithWorkingDir(dir), golang.WithMod("mod"), golang.WithBuildTag(buildTags))
	buildOpts := &golang.BuildOpts{ExtraArgs: []string{"-trimpath", "-ldflags=-s -w"}}
	var log strings.Builder
	logger := llog.New(slog.LevelWarn, func(format string, args ...any) { fmt.Fprintf(&log, format+"\n", args...) })
	image := filepath.Join(dir, "image.cpio")
	err = buildUImage(ctx, dir, logger,
		uimage.WithReplaceEnv(env),
		uimage.WithTempDir(dir),
		uimage.WithSkipLDD(),
		uimage.WithBaseArchive(base),
		uimage.WithCommands(buildOpts, builder.Busybox, cmds...),
		uimage.WithCPIOOutput(image))
	if err != nil {
		if log.Len() > 0 {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(log.String()))
		}
		return err
	}
	defer os.RemoveAll(dir)
	return os.Rename(image, dst)
}
