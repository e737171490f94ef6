// Package sample holds guest tests for vmtest's own integration tests: one
// that passes, one that fails on purpose, and guests that panic or hang. They
// skip unless run inside a vmtest guest, and each one only when asked for.
package sample

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func guestOnly(t *testing.T) {
	if os.Getenv("VMTEST_GUEST") != "1" {
		t.Skip("runs only inside a vmtest guest")
	}
}

func TestPass(t *testing.T) {
	guestOnly(t)
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s", unix.ByteSliceToString(u.Release[:]))
	if dir := os.Getenv("VMTEST_ARTIFACTS"); dir != "" {
		if err := os.WriteFile(dir+"/uname.txt", []byte(unix.ByteSliceToString(u.Release[:])), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFailOnPurpose(t *testing.T) {
	guestOnly(t)
	t.Error("this test fails on purpose")
}

func TestSkip(t *testing.T) {
	guestOnly(t)
	t.Skip("skipped on purpose")
}

// TestPanicKernel crashes the guest kernel through sysrq.
func TestPanicKernel(t *testing.T) {
	guestOnly(t)
	if err := os.WriteFile("/proc/sysrq-trigger", []byte("c"), 0o200); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Minute)
	t.Fatal("the guest survived sysrq-c")
}

// TestHang blocks for ever, ignoring the signals the test timeout would use.
func TestHang(t *testing.T) {
	guestOnly(t)
	for {
		time.Sleep(time.Hour)
	}
}

// TestWarn makes the kernel print a WARNING-style splat via /dev/kmsg, which
// the runner must report even though the test passes.
func TestWarn(t *testing.T) {
	guestOnly(t)
	msg := "<4>WARNING: CPU: 0 PID: 1 at vmtest/sample: deliberate splat for the runner's test\n"
	if !strings.HasPrefix(msg, "<4>") {
		t.Fatal("bad message")
	}
	if err := os.WriteFile("/dev/kmsg", []byte(msg), 0o200); err != nil {
		t.Fatal(err)
	}
}

// TestHangOn612 hangs on 6.12 kernels and passes elsewhere, so a matrix run
// has one kernel that finishes and one that does not.
func TestHangOn612(t *testing.T) {
	guestOnly(t)
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(unix.ByteSliceToString(u.Release[:]), "6.12") {
		for {
			time.Sleep(time.Hour)
		}
	}
}

// TestModuleLoaded checks that veth was loaded by the guest agent from the
// image (run it with -modules veth), and reports the kernel release as an
// artifact.
func TestModuleLoaded(t *testing.T) {
	guestOnly(t)
	b, err := os.ReadFile("/proc/modules")
	if err != nil {
		t.Fatal(err)
	}
	loaded := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			loaded[f[0]] = true
		}
	}
	for _, m := range []string{"veth"} {
		if !loaded[m] {
			t.Errorf("module %s is not loaded; loaded: %v", m, loaded)
		}
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv("VMTEST_ARTIFACTS"); dir != "" {
		if err := os.WriteFile(dir+"/uname.txt", []byte(unix.ByteSliceToString(u.Release[:])), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestGuestSetup checks what the guest agent (or u-root's init) set up for
// eBPF tests, and writes a marker to the kernel log that the host must find in
// dmesg.log: the last records of the log must reach it too.
func TestGuestSetup(t *testing.T) {
	guestOnly(t)
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	mounts := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 2 {
			mounts[f[1]] = f[2]
		}
	}
	want := map[string]string{"/proc": "proc", "/sys": "sysfs", "/dev": "devtmpfs",
		"/sys/fs/bpf": "bpf", "/sys/kernel/tracing": "tracefs", "/sys/kernel/debug": "debugfs"}
	if comm, _ := os.ReadFile("/proc/1/comm"); strings.TrimSpace(string(comm)) == "vmtest-guest" {
		// The agent as PID 1 mounts cgroup v2; u-root's init mounts v1.
		want["/sys/fs/cgroup"] = "cgroup2"
	}
	for dir, fs := range want {
		if mounts[dir] != fs {
			t.Errorf("%s: mounted %q, want %s", dir, mounts[dir], fs)
		}
	}
	// /tmp is the root file system's own (a tmpfs over it would hide files
	// the host put there), writable by all as on a host.
	if st, err := os.Stat("/tmp"); err != nil {
		t.Error(err)
	} else if !st.IsDir() || st.Mode()&os.ModeSticky == 0 || st.Mode().Perm() != 0o777 {
		t.Errorf("/tmp: mode %v, want a directory with mode 1777", st.Mode())
	}
	if err := os.WriteFile("/tmp/vmtest-sample", []byte("x"), 0o644); err != nil {
		t.Error(err)
	}
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		t.Fatal(err)
	}
	if ifr.Uint16()&unix.IFF_UP == 0 {
		t.Error("lo is down")
	}
	if err := os.WriteFile("/dev/kmsg", []byte("<6>vmtest-sample: last kmsg record\n"), 0o200); err != nil {
		t.Fatal(err)
	}
}

// TestMakeOrphans leaves exited grandchildren behind: its child starts
// another copy of this binary and exits without waiting for it, so the
// grandchild is reparented to PID 1 and, once it exits, is a zombie until
// PID 1 reaps it. TestNoZombies, run as the next command, checks that.
func TestMakeOrphans(t *testing.T) {
	guestOnly(t)
	if os.Getenv("SAMPLE_ROLE") == "parent" {
		for i := 0; i < 3; i++ {
			cmd := exec.Command(os.Args[0], "-test.run", "^TestMakeOrphans$")
			cmd.Env = append(os.Environ(), "SAMPLE_ROLE=orphan")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
		}
		return // without waiting: the three are orphaned
	}
	if os.Getenv("SAMPLE_ROLE") == "orphan" {
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestMakeOrphans$")
	cmd.Env = append(os.Environ(), "SAMPLE_ROLE=parent")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	time.Sleep(200 * time.Millisecond) // let the orphans exit
}

// TestNoZombies fails if any process in the guest is a zombie.
func TestNoZombies(t *testing.T) {
	guestOnly(t)
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ...: comm may hold spaces, so look after the last ')'.
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 && i+2 < len(s) && s[i+2] == 'Z' {
			t.Errorf("zombie: %s", strings.TrimSpace(s[:min(len(s), 80)]))
		}
	}
}

// TestToggleTracepoints enables and disables tracepoints in a loop while
// other threads keep every CPU switching tasks: each toggle makes the kernel
// patch its own text (int3-based text_poke) under the other CPUs' feet, as
// attaching BPF programs does. Run with 2 vCPUs: QEMU's multi-threaded TCG
// got this wrong (oopses on 7.x, hangs on 6.1).
func TestToggleTracepoints(t *testing.T) {
	guestOnly(t)
	stop := make(chan struct{})
	defer close(stop)
	for range 4 {
		go func() {
			runtime.LockOSThread()
			for {
				select {
				case <-stop:
					return
				default:
					_ = unix.Nanosleep(&unix.Timespec{Nsec: 1000}, nil)
				}
			}
		}()
	}
	events := []string{"sched/sched_switch", "sched/sched_wakeup", "timer/hrtimer_start", "irq/irq_handler_entry"}
	n := 0
	for deadline := time.Now().Add(4 * time.Second); time.Now().Before(deadline); {
		for _, e := range events {
			for _, v := range []string{"1", "0"} {
				if err := os.WriteFile("/sys/kernel/tracing/events/"+e+"/enable", []byte(v), 0); err != nil {
					t.Fatal(err)
				}
				n++
			}
		}
	}
	t.Logf("%d toggles", n)
}

// TestCommands runs commands tests commonly exec, from PATH: they are there
// as on a host.
func TestCommands(t *testing.T) {
	guestOnly(t)
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("uname", "-r").Output()
	if err != nil {
		t.Fatalf("uname -r: %v", err)
	}
	if got, want := strings.TrimSpace(string(out)), unix.ByteSliceToString(u.Release[:]); got != want {
		t.Errorf("uname -r = %q, want %q", got, want)
	}
	if out, err := exec.Command("ip", "link", "show", "lo").CombinedOutput(); err != nil || !strings.Contains(string(out), "lo") {
		t.Errorf("ip link show lo: %v: %s", err, out)
	}
	for _, c := range []string{"mount", "cat", "ls", "grep", "ps", "insmod", "lsmod"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Errorf("%s: %v", c, err)
		}
	}
}

// TestAutoload creates a geneve link, a clsact qdisc and a flower filter
// without loading their modules: the kernel asks user space for them
// (request_module), as on a host where modprobe answers.
func TestAutoload(t *testing.T) {
	guestOnly(t)
	if err := addGeneve("gnv0", 42, [4]byte{192, 0, 2, 1}); err != nil {
		t.Fatalf("add geneve link (module geneve, alias rtnl-link-geneve): %v", err)
	}
	link, err := net.InterfaceByName("gnv0")
	if err != nil {
		t.Fatal(err)
	}
	if err := addClsact(link.Index); err != nil {
		t.Fatalf("add clsact qdisc (module sch_ingress): %v", err)
	}
	if err := addFlower(link.Index); err != nil {
		t.Fatalf("add flower filter (module cls_flower): %v", err)
	}
	// As on a host (kmod static-nodes): /dev/net/tun exists before tun is
	// loaded, and opening it loads it (char-major-10-200).
	tun, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open /dev/net/tun (module tun): %v", err)
	}
	tun.Close()
	mods, _ := os.ReadFile("/proc/modules")
	for _, m := range []string{"geneve", "sch_ingress", "cls_flower", "tun"} {
		if !strings.Contains(string(mods), m+" ") {
			t.Errorf("module %s is not loaded:\n%s", m, mods)
		}
	}
}

// TestBootID keeps the guest's boot ID as an artifact and prints
// $SAMPLE_MARK: commands of one session share the boot, not the
// environment.
func TestBootID(t *testing.T) {
	guestOnly(t)
	id, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(os.Getenv("VMTEST_ARTIFACTS"), "boot_id"), id, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("mark %q", os.Getenv("SAMPLE_MARK"))
}

// TestLeaveDaemon starts a process in a session of its own that outlives
// the test binary.
func TestLeaveDaemon(t *testing.T) {
	guestOnly(t)
	if os.Getenv("SAMPLE_ROLE") == "daemon" {
		time.Sleep(time.Hour)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestLeaveDaemon$")
	cmd.Env = append(os.Environ(), "SAMPLE_ROLE=daemon")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
}

// TestNoStrays fails if a daemon of TestLeaveDaemon still runs.
func TestNoStrays(t *testing.T) {
	guestOnly(t)
	envs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range envs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), "SAMPLE_ROLE=daemon") {
			t.Errorf("a daemon left by an earlier command still runs: %s", p)
		}
	}
}
