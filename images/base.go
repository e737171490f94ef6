// Package images builds the guest's initramfs.
//
// An image has two parts, concatenated into one file (the kernel unpacks a
// series of cpio archives in order):
//
//   - the base: the vmtest guest agent as /init (or, with InitURoot, u-root's
//     init starting the agent), built with u-root's image builder as a
//     library and cached by the hash of their sources, so a second run does
//     not rebuild; without sources, the vmtest program itself as the agent;
//   - the overlay: what one run needs (the job, its test binaries, kernel
//     modules, testdata), written fresh for every run.
package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/mkuimage/uimage/builder"
	"github.com/u-root/uio/llog"
)

// Go packages that make up the base image.
const (
	InitPackage  = "github.com/u-root/u-root/cmds/core/init"
	AgentPackage = "github.com/skbstore/skbstore/vmtest/cmd/vmtest-guest"
	modulePath   = "github.com/skbstore/skbstore"
)

// BaseOptions configures Base.
type BaseOptions struct {
	// CacheDir holds built images; required.
	CacheDir string
	// SourceDir is a directory inside a Go module that can build
	// AgentPackage and InitPackage: this project's checkout or a module that
	// requires it. Empty means $VMTEST_SRC, else the current directory's
	// module if it provides this project, else an error that says so.
	SourceDir string
	// Self, when set, is a program that acts as the agent when it runs as
	// PID 1 (the vmtest program itself): without a source to build from,
	// the base image is made of it instead of failing.
	Self string
	// Commands are u-root command packages put in the image as one
	// busybox binary, linked from /bbin (on the guest's PATH), for tests
	// that run commands such as uname or ip. Nil means DefaultCommands;
	// an empty, non-nil list means none.
	Commands []string
	// Progress receives a line per long step; nil discards.
	Progress io.Writer
	// Init picks the guest's PID 1: InitAgent (default) makes the agent
	// PID 1, mounting what eBPF tests need itself; InitURoot is u-root's
	// init, which sets up a general-purpose u-root system and starts the
	// agent as its uinit. Under software emulation u-root's init costs
	// about 0.1-0.2 s a boot: a second Go program to start, and ten cgroup
	// v1 mounts.
	Init string
	// Arch is the guest's GOARCH (amd64, arm64): the agent and commands are
	// built for it. Empty means $GOARCH, else the host's.
	Arch string
}

// arch is the GOARCH the image is built for.
func (o BaseOptions) arch() string {
	if o.Arch != "" {
		return o.Arch
	}
	if a := os.Getenv("GOARCH"); a != "" {
		return a
	}
	return runtime.GOARCH
}

// DefaultCommands are the commands a guest gets unless told otherwise: what
// tests commonly run (uname, ip, mount...), u-root's implementations. They
// cost about 5 MB of image, some 50 ms a boot under software emulation.
var DefaultCommands = func() []string {
	var pkgs []string
	for _, c := range []string{"basename", "cat", "chmod", "cp", "date", "df", "dirname", "dmesg", "echo", "false", "find",
		"grep", "head", "hostname", "id", "insmod", "ip", "kill", "ln", "ls", "lsmod", "mkdir", "mktemp", "mount", "mv",
		"pidof", "printenv", "ps", "readlink", "realpath", "rm", "rmmod", "seq", "sleep", "sort", "sync", "tail", "tee",
		"touch", "tr", "true", "truncate", "umount", "uname", "uniq", "uptime", "wc", "which", "xargs", "yes"} {
		pkgs = append(pkgs, "github.com/u-root/u-root/cmds/core/"+c)
	}
	return pkgs
}()

// Choices of BaseOptions.Init.
const (
	InitURoot = "uroot"
	InitAgent = "agent"
)

// Base returns the path of the cached base image, building it first when its
// inputs changed.
func Base(ctx context.Context, opts BaseOptions) (string, error) {
	if opts.CacheDir == "" {
		return "", errors.New("base image: no cache directory")
	}
	progress := opts.Progress
	if progress == nil {
		progress = io.Discard
	}
	src, err := SourceDir(ctx, opts.SourceDir)
	if err != nil {
		if opts.Self == "" || opts.Init == InitURoot {
			return "", fmt.Errorf("base image: %w", err)
		}
		if opts.arch() != runtime.GOARCH {
			// The program itself is the agent only for its own architecture.
			return "", fmt.Errorf("base image for %s guests: the agent must be built for %s, from source: %w", opts.arch(), opts.arch(), err)
		}
		return selfBase(ctx, opts, progress)
	}
	// The agent alone: u-root's init is not needed, and every megabyte of
	// image costs about 10 ms of unpacking under software emulation.
	initCmd, uinit := "vmtest-guest", ""
	pkgs := []string{AgentPackage}
	switch opts.Init {
	case "", InitAgent:
		opts.Init = InitAgent
	case InitURoot:
		initCmd, uinit = "init", "vmtest-guest"
		pkgs = []string{InitPackage, AgentPackage}
	default:
		return "", fmt.Errorf("base image: unknown init %q: want %s or %s", opts.Init, InitURoot, InitAgent)
	}
	cmds := opts.Commands
	if cmds == nil {
		cmds = DefaultCommands
	}
	mod := modOverride(ctx, src)
	key, err := sourceKey(ctx, src, opts.arch(), mod, append(append([]string(nil), pkgs...), cmds...))
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	kind := opts.Init
	if len(cmds) > 0 {
		kind += "-cmds"
	}
	path := filepath.Join(opts.CacheDir, "base-"+kind+"-"+key[:24]+".cpio")
	if _, err := os.Stat(path); err == nil {
		// The modification time says when an image was last used, for
		// pruneImages.
		now := time.Now()
		_ = os.Chtimes(path, now, now)
		return path, nil
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	fmt.Fprintf(progress, "building guest image (init %s)...\n", opts.Init)
	tmpDir, err := os.MkdirTemp(opts.CacheDir, "build-")
	if err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	tmp := filepath.Join(tmpDir, "base.cpio")

	env := golang.Default(golang.DisableCGO(), golang.WithGOOS("linux"), golang.WithGOARCH(opts.arch()), golang.WithWorkingDir(src), golang.WithBuildTag(buildTags), golang.WithMod(mod))
	logger := llog.New(slog.LevelWarn, func(format string, args ...any) { fmt.Fprintf(progress, format+"\n", args...) })
	// u-root's builder takes no context. It runs on its own so that a
	// cancelled build returns at once; it then finishes (or fails) in the
	// background and removes its temporary directory, and its image is
	// never put in the cache.
	buildOpts := &golang.BuildOpts{ExtraArgs: []string{"-trimpath", "-ldflags=-s -w"}}
	mods := []uimage.Modifier{
		uimage.WithReplaceEnv(env),
		uimage.WithTempDir(tmpDir),
		uimage.WithSkipLDD(),
		uimage.WithBaseArchive(uimage.DefaultRamfs()),
		uimage.WithCommands(buildOpts, builder.Binary, pkgs...),
		uimage.WithInit(initCmd),
		uimage.WithUinit(uinit),
		uimage.WithCPIOOutput(tmp),
	}
	if len(cmds) > 0 {
		// One busybox binary: much smaller than a binary a command.
		mods = append(mods, uimage.WithCommands(buildOpts, builder.Busybox, cmds...))
	}
	if err := buildUImage(ctx, tmpDir, logger, mods...); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("build base image: %w", err)
		}
		return "", fmt.Errorf("build base image with u-root: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("base image: %w", err)
	}
	pruneImages(opts.CacheDir, time.Now().Add(-imageMaxAge))
	return path, nil
}

// buildUImage runs u-root's image builder, which takes no context, on its
// own, so that a cancelled build returns at once; it then finishes (or
// fails) in the background and removes tmpDir, and its image is never put in
// the cache. A failed build removes tmpDir too; after a good one the caller
// takes the image out of tmpDir and removes it.
func buildUImage(ctx context.Context, tmpDir string, logger *llog.Logger, mods ...uimage.Modifier) error {
	built := make(chan error, 1)
	go func() {
		built <- uimage.Create(logger, mods...)
	}()
	select {
	case err := <-built:
		if err != nil {
			os.RemoveAll(tmpDir)
		}
		return err
	case <-ctx.Done():
		go func() {
			<-built
			os.RemoveAll(tmpDir)
		}()
		return ctx.Err()
	}
}

// buildTags are the build tags of the guest's commands: goshsmall gives
// vmtest shell's gosh the terminal's own line editing (a serial console in
// cooked mode) rather than a full-screen line editor, which redraws the
// line at every key and takes keys typed before it is ready as plain text.
const buildTags = "goshsmall"

// imageMaxAge is how long a base image nobody used stays in the cache. Each
// change to the agent's sources (or to Go or a dependency) makes a new one.
const imageMaxAge = 14 * 24 * time.Hour

// pruneImages removes base images last used before cutoff. Another process
// that still uses one has it open already; the kernel keeps its data.
func pruneImages(dir string, cutoff time.Time) {
	old, _ := filepath.Glob(filepath.Join(dir, "base-*.cpio"))
	for _, p := range old {
		if st, err := os.Stat(p); err == nil && st.ModTime().Before(cutoff) {
			_ = os.Remove(p)
		}
	}
}

// SourceDir finds a directory from which this project's packages build: dir
// if set, else $VMTEST_SRC, else the current directory's module when it is
// this project or requires it.
func SourceDir(ctx context.Context, dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv("VMTEST_SRC")
	}
	if dir != "" {
		return dir, nil
	}
	args := []string{"list", "-m", "-f", "{{.Dir}}"}
	if mod := modOverride(ctx, ""); mod != golang.ModNone {
		args = append(args, "-mod="+string(mod))
	}
	cmd := exec.CommandContext(ctx, "go", append(args, modulePath)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		return "", fmt.Errorf("cannot find the source of %s to build the guest agent from the current directory "+
			"(%s); run from a checkout of it, from a module that requires it, or set VMTEST_SRC to a checkout",
			modulePath, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// listedPackage is the part of `go list -json` output that sourceKey reads.
type listedPackage struct {
	ImportPath string
	Dir        string
	GoFiles    []string
	Standard   bool
	Module     *struct {
		Path    string
		Version string
		Sum     string
		Main    bool
		Replace *struct{ Path, Version, Dir string }
	}
}

// modOverride is the -mod the agent's build in dir must give its go
// commands, "" for none. The user's GOFLAGS reach them (u-root's builder
// runs go with this process's environment) and are the user's to keep, but
// a -mod=mod meant for the user's module stops every go command in a
// workspace ("-mod may only be set to readonly or vendor when in workspace
// mode"), as this project's checkout is: there it becomes readonly, what go
// uses by default.
func modOverride(ctx context.Context, dir string) golang.ModBehavior {
	mod := ""
	for _, f := range strings.Fields(os.Getenv("GOFLAGS")) {
		if v, ok := strings.CutPrefix(f, "-mod="); ok {
			mod = v
		}
	}
	if mod == "" || mod == string(golang.ModReadonly) || mod == string(golang.ModVendor) {
		return golang.ModNone
	}
	cmd := exec.CommandContext(ctx, "go", "env", "GOWORK")
	cmd.Dir = dir
	out, err := cmd.Output()
	if w := strings.TrimSpace(string(out)); err != nil || w == "" || w == "off" {
		return golang.ModNone
	}
	return golang.ModReadonly
}

// sourceKey hashes everything the base image is built from: the Go version,
// the versions of dependency modules and the content of local sources. It
// costs one `go list`, much less than building.
func sourceKey(ctx context.Context, dir, goarch string, mod golang.ModBehavior, pkgs []string) (string, error) {
	args := []string{"list", "-tags", buildTags, "-deps", "-json"}
	if mod != golang.ModNone {
		args = append(args, "-mod="+string(mod))
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkgs...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list guest packages in %s: %w: %s", dir, err, strings.TrimSpace(stderr.String()))
	}
	h := sha256.New()
	fmt.Fprintf(h, "vmtest-base-v2 %s %s %s\n", goVersion(ctx), goarch, buildTags)
	dec := json.NewDecoder(bytes.NewReader(out))
	var lines []string
	for dec.More() {
		var p listedPackage
		if err := dec.Decode(&p); err != nil {
			return "", fmt.Errorf("parse go list output: %w", err)
		}
		if p.Standard {
			continue
		}
		m := p.Module
		if m != nil && !m.Main && m.Replace == nil && m.Version != "" {
			lines = append(lines, fmt.Sprintf("%s %s@%s %s", p.ImportPath, m.Path, m.Version, m.Sum))
			continue
		}
		// Local code: hash file contents.
		sort.Strings(p.GoFiles)
		for _, f := range p.GoFiles {
			b, err := os.ReadFile(filepath.Join(p.Dir, f))
			if err != nil {
				return "", err
			}
			sum := sha256.Sum256(b)
			lines = append(lines, fmt.Sprintf("%s/%s %x", p.ImportPath, f, sum))
		}
	}
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Fprintln(h, l)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func goVersion(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output()
	if err != nil {
		return runtime.Version()
	}
	return strings.TrimSpace(string(out))
}
