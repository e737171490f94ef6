package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/vmtest"
)

// The guest's interactive shell, u-root's gosh: one more u-root command in
// the image of vmtest shell and -shell-on-fail.
const (
	shellCommand = "gosh"
	shellPackage = "github.com/u-root/u-root/cmds/core/" + shellCommand
)

func shellCmd(ctx context.Context, args []string) (int, error) {
	fs := flag.NewFlagSet("vmtest shell", flag.ContinueOnError)
	var f vmFlags
	f.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: vmtest shell [flags] [-- COMMAND [ARGS...]]\n\n"+
			"Boots the kernel into the guest the tests get (same mounts, -modules, the current Go module\n"+
			"at its path with the working directory there, GOROOT, all of the kernel's modules, the\n"+
			"kernel's config) and runs an interactive shell (u-root's gosh, with u-root's commands), or\n"+
			"COMMAND, on this terminal. Ctrl-C goes to the guest's foreground process; leaving the\n"+
			"shell powers the guest off, and vmtest exits with the shell's status. Kernel messages\n"+
			"stay off the terminal (they are in the results' dmesg.log).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, nil
		}
		return 2, errUsage
	}
	f.forAPerson()
	if err := f.check(); err != nil {
		return 2, err
	}
	prog, progArgs := shellCommand, []string(nil)
	if fs.NArg() > 0 {
		prog, progArgs = fs.Arg(0), fs.Args()[1:]
	}
	f.extraCommands = []string{shellPackage}
	p, err := prepare(ctx, &f, os.Stderr)
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
	outDir, keep, err := execOutDir(f.results, "shell")
	if err != nil {
		return 1, err
	}
	opts := f.options(p, p.base)
	opts.Append = strings.TrimSpace(opts.Append + " quiet")
	opts.Commands = []vmtest.Command{{ID: "shell", GuestPath: prog, Args: progArgs, Dir: cwd, Terminal: true}}
	opts.Env = terminalEnv()
	opts.Files, opts.Shares = files, shares
	opts.OutDir = outDir
	opts.Console, opts.Stdin = os.Stdout, os.Stdin
	res, err := bootGuest(ctx, &f, p, opts)
	if err != nil {
		return 1, err
	}
	return reportExec(os.Stderr, res, f.kernel, keep), nil
}

// terminalEnv is what the guest's shell learns of this terminal.
func terminalEnv() []string {
	env := []string{"TERM=" + orDefault(os.Getenv("TERM"), "vt100")}
	if ws, err := unix.IoctlGetWinsize(int(os.Stdin.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
		env = append(env, fmt.Sprintf("COLUMNS=%d", ws.Col), fmt.Sprintf("LINES=%d", ws.Row))
	}
	return env
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
