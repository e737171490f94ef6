package vmtest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
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

// qemuArgsFor returns the accelerator and CPU model arguments.
func (a AccelChoice) qemuArgs() []string {
	if a.Name == AccelKVM {
		return []string{"-accel", "kvm", "-cpu", "host"}
	}
	return []string{"-accel", "tcg", "-cpu", "max"}
}

var (
	probeMu    sync.Mutex
	probeCache = map[string]AccelChoice{}
)

// ChooseAccel decides the accelerator: want is AccelKVM or AccelTCG to force
// one, or "" / AccelAuto to probe. $VMTEST_ACCEL overrides an empty want.
// The probe boots kernel under KVM and waits for its first console line: on
// some hosts /dev/kvm opens but guests abort or hang, so only a real boot
// tells. The answer is remembered for the life of the process.
func ChooseAccel(ctx context.Context, qemu, kernel, want string) (AccelChoice, error) {
	if want == "" || want == AccelAuto {
		want = os.Getenv("VMTEST_ACCEL")
	}
	switch want {
	case AccelKVM:
		return AccelChoice{AccelKVM, "forced"}, nil
	case AccelTCG:
		return AccelChoice{AccelTCG, "forced"}, nil
	case "", AccelAuto:
	default:
		return AccelChoice{}, fmt.Errorf("unknown accelerator %q: want auto, kvm or tcg", want)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return AccelChoice{AccelTCG, "software emulation: /dev/kvm: " + shortErr(err)}, nil
	}
	f.Close()

	key := qemu + "\x00" + kernel
	probeMu.Lock()
	defer probeMu.Unlock()
	if c, ok := probeCache[key]; ok {
		return c, nil
	}
	c := probeKVM(ctx, qemu, kernel)
	probeCache[key] = c
	return c, nil
}

func shortErr(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err.Error()
	}
	return err.Error()
}

func probeKVM(ctx context.Context, qemu, kernel string) AccelChoice {
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, qemu, "-nodefaults", "-no-user-config", "-display", "none",
		"-M", "q35", "-m", "256", "-accel", "kvm", "-cpu", "host",
		"-kernel", kernel, "-append", "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1",
		"-serial", "stdio", "-no-reboot")
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
