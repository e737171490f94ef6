package vmtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Accelerator names accepted in Options.Accel and $VMTEST_ACCEL.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// ProbeTimeout bounds the KVM probe. A working KVM guest prints its first
// kernel line well within a second; a broken one either aborts at once or
// hangs forever, so waiting longer buys nothing.
var ProbeTimeout = 4 * time.Second

// AccelChoice is the accelerator a run uses and why.
type AccelChoice struct {
	Name   string // AccelKVM or AccelTCG
	Reason string
}

func (a AccelChoice) String() string { return a.Name + " (" + a.Reason + ")" }

// qemuArgs returns the accelerator and CPU model arguments.
func (a AccelChoice) qemuArgs(m machine) []string {
	if a.Name == AccelKVM {
		return []string{"-accel", "kvm", "-cpu", "host"}
	}
	// One host thread for all vCPUs. With QEMU's default multi-threaded
	// TCG, a guest kernel that patches its own text while another vCPU runs
	// (static keys, tracepoints, BPF trampolines: all int3-based
	// text_poke) breaks: toggling tracepoints in a loop with 2 vCPUs oopsed
	// 7.2 ("Oops: int3") and hung 6.1 in every boot, and plain boots of 7.2
	// oopsed in about 1 of 100. Single-threaded TCG runs the vCPUs in turn
	// and none of that happens (measurements in the README).
	return []string{"-accel", "tcg,thread=single", "-cpu", m.tcgCPU}
}

var (
	probeMu    sync.Mutex
	probeCache = map[string]AccelChoice{}
)

const probeTTL = 24 * time.Hour

type probeRecord struct {
	Key    string
	Choice AccelChoice
	Time   time.Time
}

// probeKey identifies what a probe's answer depends on.
func probeKey(qemu string) string {
	var uts syscall.Utsname
	_ = syscall.Uname(&uts)
	rel := make([]byte, 0, len(uts.Release))
	for _, c := range uts.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	mtime := ""
	if st, err := os.Stat(qemu); err == nil {
		mtime = st.ModTime().UTC().Format(time.RFC3339Nano)
	}
	return qemu + " " + mtime + " " + string(rel)
}

func loadProbe(file, key string) (AccelChoice, bool) {
	if file == "" {
		return AccelChoice{}, false
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return AccelChoice{}, false
	}
	var r probeRecord
	if json.Unmarshal(b, &r) != nil || r.Key != key || time.Since(r.Time) > probeTTL || r.Choice.Name == "" {
		return AccelChoice{}, false
	}
	r.Choice.Reason += " (probed " + r.Time.Format(time.RFC3339) + ")"
	return r.Choice, true
}

func saveProbe(file, key string, c AccelChoice) {
	if file == "" {
		return
	}
	b, _ := json.Marshal(probeRecord{Key: key, Choice: c, Time: time.Now()})
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return
	}
	tmp := file + ".tmp" + strconv.Itoa(os.Getpid())
	if os.WriteFile(tmp, b, 0o644) == nil {
		_ = os.Rename(tmp, file)
	}
}

// ChooseAccel decides the accelerator: want is AccelKVM or AccelTCG to force
// one, or "" / AccelAuto to probe. $VMTEST_ACCEL overrides an empty want.
// The probe boots kernel under KVM and waits for its first console line: on
// some hosts /dev/kvm opens but guests abort or hang, so only a real boot
// tells. The answer is remembered for the life of the process, and in the
// file cache when not empty, for a day and only for the same QEMU binary and
// host kernel, so that each `vmtest exec` of a go test run does not pay for
// its own probe.
func ChooseAccel(ctx context.Context, qemu, kernel, want, cache string) (AccelChoice, error) {
	m, err := kernelMachine(kernel)
	if err != nil {
		return AccelChoice{}, err
	}
	q, err := findQEMU(qemu, m)
	if err != nil {
		return AccelChoice{}, err
	}
	qemu = q
	if want == "" || want == AccelAuto {
		want = os.Getenv("VMTEST_ACCEL")
	}
	switch want {
	case AccelKVM:
		if !m.native() {
			return AccelChoice{}, fmt.Errorf("accelerator kvm: the kernel %s is for %s, this host is %s: KVM runs guests of the host's architecture only (use tcg or auto)",
				kernel, m.arch, runtime.GOARCH)
		}
		return AccelChoice{AccelKVM, "forced"}, nil
	case AccelTCG:
		return AccelChoice{AccelTCG, "forced"}, nil
	case "", AccelAuto:
	default:
		return AccelChoice{}, fmt.Errorf("unknown accelerator %q: want auto, kvm or tcg", want)
	}
	if !m.native() {
		return AccelChoice{AccelTCG, fmt.Sprintf("software emulation: %s guest on this %s host", m.arch, runtime.GOARCH)}, nil
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return AccelChoice{AccelTCG, "software emulation: /dev/kvm: " + shortErr(err)}, nil
	}
	f.Close()

	key := probeKey(qemu)
	probeMu.Lock()
	defer probeMu.Unlock()
	if c, ok := probeCache[key]; ok {
		return c, nil
	}
	c, ok := loadProbe(cache, key)
	if !ok {
		c = probeKVM(ctx, qemu, kernel, m)
		if ctx.Err() != nil {
			return AccelChoice{}, ctx.Err()
		}
		saveProbe(cache, key, c)
	}
	probeCache[key] = c
	return c, nil
}

func shortErr(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err.Error()
	}
	return err.Error()
}

func probeKVM(ctx context.Context, qemu, kernel string, m machine) AccelChoice {
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	start := time.Now()
	args := []string{"-nodefaults", "-no-user-config", "-display", "none"}
	args = append(args, m.boardArgs(AccelKVM)...)
	early := m.earlycon
	if early == "" {
		early = "earlyprintk=serial," + m.console
	}
	args = append(args, "-m", "256", "-accel", "kvm", "-cpu", "host",
		"-kernel", kernel, "-append", "console="+m.console+" "+early+" panic=-1",
		"-serial", "stdio", "-no-reboot")
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stdin = nil
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return AccelChoice{AccelTCG, "KVM probe: " + err.Error()}
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return AccelChoice{AccelTCG, "KVM probe: " + err.Error()}
	}
	booted := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Linux version") {
				booted <- true
				return
			}
		}
		booted <- false
	}()
	var ok bool
	select {
	case ok = <-booted:
	case <-ctx.Done():
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Wait()
	if ok {
		return AccelChoice{AccelKVM, fmt.Sprintf("KVM probe booted in %.1fs", time.Since(start).Seconds())}
	}
	why := "guest printed nothing within " + ProbeTimeout.String()
	if msg := firstLine(stderr.String()); msg != "" {
		why = "qemu: " + msg
	}
	return AccelChoice{AccelTCG, "software emulation: KVM probe failed: " + why}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
