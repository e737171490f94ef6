//go:build linux

package guest

import (
	"errors"
	"fmt"
	"log"
	"os"

	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/vmtest/internal/proto"
)

// mount is one file system the guest needs.
type mount struct {
	src, dst, fstype, opts string
}

// rootfs is what an eBPF test guest needs, and only that, in order.
//
// When the agent is PID 1 it does this itself instead of linking u-root's
// libinit: under software emulation every package a Go program links costs
// start-up time (about 0.1 s for libinit, netlink and the module
// decompressors), and libinit also mounts ten cgroup v1 hierarchies (slow,
// and controllers bound to v1 cannot be enabled in the cgroup v2 tree BPF
// cgroup programs attach to), efivarfs and a copy of /etc.
var rootfs = []mount{
	{"devtmpfs", "/dev", "devtmpfs", ""},
	{"proc", "/proc", "proc", ""},
	{"sysfs", "/sys", "sysfs", ""},
	{"devpts", "/dev/pts", "devpts", "newinstance,ptmxmode=666,gid=5,mode=620"},
	{"tmpfs", "/dev/shm", "tmpfs", ""},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", ""},
	{"securityfs", "/sys/kernel/security", "securityfs", ""},
	{"debugfs", "/sys/kernel/debug", "debugfs", ""},
	{"tracefs", "/sys/kernel/tracing", "tracefs", ""},
	{"bpf", "/sys/fs/bpf", "bpf", ""},
}

// initRootfs sets the guest up when the agent is PID 1 (images.InitAgent):
// /dev at once (the result port and /dev/kmsg are there), the other file
// systems and loopback in the background while the agent reads its job and
// greets the host; the channel delivers their failures when they are done.
// Failures are not fatal (a kernel without tracefs can still run tests that
// do not need it); they are also logged on the console.
func initRootfs() <-chan []error {
	for k, v := range map[string]string{
		"PATH": proto.DefaultPath,
		"HOME": "/tmp",
		"USER": "root",
	} {
		os.Setenv(k, v)
	}
	var errs []error
	fail := func(err error) {
		log.Print(err)
		errs = append(errs, err)
	}
	if err := mountOnce(rootfs[0]); err != nil {
		fail(err)
	}
	done := make(chan []error, 1)
	go func() {
		for _, m := range rootfs[1:] {
			if err := mountOnce(m); err != nil {
				fail(err)
			}
		}
		// /tmp stays part of the root file system (RAM already): a tmpfs
		// over it would hide the files the host put there, such as a
		// Go module checked out under /tmp.
		if err := os.MkdirAll("/tmp", 0o755); err != nil {
			fail(fmt.Errorf("create /tmp: %w", err))
		} else if err := os.Chmod("/tmp", 0o777|os.ModeSticky); err != nil {
			fail(fmt.Errorf("chmod /tmp: %w", err))
		}
		if err := os.Symlink("/dev/pts/ptmx", "/dev/ptmx"); err != nil && !errors.Is(err, os.ErrExist) {
			fail(fmt.Errorf("link /dev/ptmx: %w", err))
		}
		if err := loopbackUp(); err != nil {
			fail(fmt.Errorf("bring up lo: %w", err))
		}
		done <- errs
	}()
	return done
}

// mountOnce mounts m, creating its mount point; EBUSY (a file system that
// allows one mount there already has it) is not an error.
func mountOnce(m mount) error {
	if err := os.MkdirAll(m.dst, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", m.fstype, err)
	}
	err := unix.Mount(m.src, m.dst, m.fstype, 0, m.opts)
	if err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
	}
	return nil
}

// loopbackUp sets lo up with the classic interface ioctls, which need no
// netlink library.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
