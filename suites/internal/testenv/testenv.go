// Package testenv holds what the skbstore suites need around the BPF
// programs: the guard that keeps them off developers' hosts, kernel facts,
// network namespaces with a veth pair, and a way to let the network stack
// finish freeing deferred skbs before leaks are counted.
package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// RequireGuest skips t unless it runs inside a vmtest guest
// (VMTEST_GUEST=1) or the developer opted in with SKBSTORE_ALLOW_HOST=1.
// The suites attach BPF programs to the running kernel: `go test ./...` on
// a host, even as root in CI, must not do that by accident. It also skips
// when not running as root.
func RequireGuest(t testing.TB) {
	t.Helper()
	if os.Getenv("VMTEST_GUEST") != "1" && os.Getenv("SKBSTORE_ALLOW_HOST") != "1" {
		t.Skip("attaches BPF programs to the running kernel: runs only inside a vmtest guest (VMTEST_GUEST=1) or with SKBSTORE_ALLOW_HOST=1")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to load BPF programs")
	}
}

// InGuest reports whether the test runs inside a vmtest guest.
func InGuest() bool { return os.Getenv("VMTEST_GUEST") == "1" }

// KernelRelease returns uname -r.
func KernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// OnEachCPU runs fn once on every CPU the process may use, on a thread
// pinned to that CPU.
func OnEachCPU(fn func(cpu int) error) error {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return fmt.Errorf("sched_getaffinity: %w", err)
	}
	var errs []error
	for cpu := 0; cpu < 1024; cpu++ {
		if !set.IsSet(cpu) {
			continue
		}
		done := make(chan error, 1)
		go func() {
			// The thread's affinity is changed: never give it back.
			runtime.LockOSThread()
			var one unix.CPUSet
			one.Set(cpu)
			if err := unix.SchedSetaffinity(0, &one); err != nil {
				done <- fmt.Errorf("pin to cpu %d: %w", cpu, err)
				return
			}
			done <- fn(cpu)
		}()
		if err := <-done; err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Settle lets the stack finish deferred frees: since 6.1 an skb freed on a
// CPU other than the one that allocated it may be parked on that CPU's
// defer list (skb_attempt_defer_free) until net_rx_action runs there. A
// datagram over loopback sent from each CPU runs net_rx_action on it.
// Settle then waits d for RCU and timers.
func Settle(d time.Duration) error {
	err := OnEachCPU(func(int) error {
		return loopbackPing()
	})
	time.Sleep(d)
	return err
}

var pingMu sync.Mutex

func loopbackPing() error {
	pingMu.Lock()
	defer pingMu.Unlock()
	rx, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer rx.Close()
	tx, err := net.Dial("udp4", rx.LocalAddr().String())
	if err != nil {
		return err
	}
	defer tx.Close()
	if _, err := tx.Write([]byte("settle")); err != nil {
		return err
	}
	_ = rx.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	_, _, err = rx.ReadFrom(buf)
	return err
}
