//go:build linux

package guest

import (
	"errors"
	"fmt"
	"log"
	"os"
	"sync"

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

// early is how many of rootfs's first entries initRootfs mounts before it
// returns: /dev (the result port and /dev/kmsg are there), /proc and /sys,
// which the disks' set-up needs (/sys/block, /proc/sys/kernel/modprobe).
const early = 3

// rootfsSetup is the progress of initRootfs.
type rootfsSetup struct {
	// mounted is closed once every file system of rootfs is mounted: a
	// disk mounts or binds only then, as its paths may lie below one of
	// them (a module checked out under /dev/shm).
	mounted <-chan struct{}
	// done delivers the set-up's failures, loopback's included, when all of
	// it is done.
	done <-chan []error
}

// initRootfs sets the guest up when the agent is PID 1 (images.InitAgent):
// the early file systems at once, the others and loopback in the
// background while the agent reads its job, greets the host and finds its
// disks. Loopback has a goroutine of its own: bringing lo up waits for the
// kernel (RCU grace periods), time the disks' set-up can use under
// emulation. Failures are not fatal (a kernel without tracefs can still run
// tests that do not need it); they are also logged on the console.
func initRootfs() rootfsSetup {
	for k, v := range map[string]string{
		"PATH": proto.DefaultPath,
		"HOME": "/tmp",
		"USER": "root",
	} {
		os.Setenv(k, v)
	}
	var mu sync.Mutex
	var errs []error
	fail := func(err error) {
		log.Print(err)
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for _, m := range rootfs[:early] {
		if err := mountOnce(m); err != nil {
			fail(err)
		}
	}
	mounted := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := loopbackUp(); err != nil {
			fail(fmt.Errorf("bring up lo: %w", err))
		}
	}()
	go func() {
		defer wg.Done()
		for _, m := range rootfs[early:] {
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
		close(mounted)
	}()
	done := make(chan []error, 1)
	go func() {
		wg.Wait()
		done <- errs
	}()
	return rootfsSetup{mounted: mounted, done: done}
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
