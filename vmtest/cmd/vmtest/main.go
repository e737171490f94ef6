// Command vmtest runs Go tests inside Linux kernels under QEMU.
//
//	vmtest run  [flags] [-- go test [packages] [test flags]]
//	vmtest exec [flags] TESTBINARY [test flags]   (for go test -exec)
//	vmtest shell [flags] [-- COMMAND...]
//	vmtest kernels [-fetch VERSION]
//	vmtest bench [-kernel all] [-n 5]
//
// See `vmtest help` for details.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/skbstore/skbstore/kernels"
	"github.com/skbstore/skbstore/vmtest/internal/guest"
)

var usageText = `vmtest runs Go tests inside Linux kernels under QEMU.

Usage:
  vmtest run [flags] [-- go test [packages] [go test flags]]
      Builds the test binaries on the host (CGO_ENABLED=0 unless set, or -race,
      whose binaries get their C libraries from the host), boots each kernel
      with vmtest's guest agent as /init of a u-root initramfs and runs every
      package's test binary in it as root, one after another (a second guest of
      the kernel takes packages go test runs in parallel when a guest slot is
      free; a package that crashes or hangs its guest fails alone and the rest
      go on in a fresh one; -boot per-package boots once per package), and
      prints each test's result, then "N passed, N failed, N skipped". Exits 0
      only when every test passed, the guest kernel reported no splat (WARNING,
      BUG, oops, lockdep, KASAN, RCU stall, hung task), every module loaded, the
      guest kept within -max-output, -max-artifacts and -max-artifact-files,
      nothing but the guest agent wrote to the result port, and no package had
      every test skipped (-allow-skip accepts that).
      Without arguments it runs "go test ./...".
      Results (console log, kernel log, test output, artifacts, go test -json
      events) are kept under -results.

  vmtest exec [flags] TESTBINARY [ARGS...]
      Boots the kernel and runs one static binary in the guest, streaming its
      output and exiting with its status. Made for go test's -exec flag:
          go test -exec "vmtest exec -kernel 6.1" ./pkg

  vmtest shell [flags] [-- COMMAND [ARGS...]]
      Boots the guest the tests get (the current Go module at its path, the
      working directory there) and runs an interactive shell, or COMMAND, on
      this terminal; leaving it powers the guest off.

  vmtest kernels [-fetch NAME [-debug]] [-matrix]
      Lists the kernel matrix, which source serves each kernel, and what is
      cached; -fetch fetches one (-debug: with its vmlinux for gdb); -matrix
      prints the matrix as JSON ({kernel, arch, id} each), for CI matrices.

  vmtest bench [-kernel all] [-n 7]
      Measures the cold-cache costs (kernel fetch, image build), the runner
      against the floor (the same kernel booting a trivial /init that powers
      off) and the matrix wall time, one guest at a time and in parallel;
      prints tables and writes them to the results directory.

Kernels (-kernel; default %[2]s) are looked for in Debian's archive first
(series %[1]s; flavours -cloud, the default, -generic, -rt), then in an OCI
repository of kernel images, by default ghcr.io/cilium/ci-kernels: versions
(6.6), exact releases (6.6.134), moving tags (stable, mainline, longterm),
-debug and -selftests images, pinned digests (6.6@sha256:...). oci:NAME or
debian:NAME asks one source; NAME/arm64 (or -arch arm64) is the same kernel
for arm64 guests, emulated on an x86 host (test binaries are built with
GOARCH=arm64; cgo and -race stay on the host's architecture); a path
(containing "/": write ./6.1/arm64 for a directory of that name) boots a local
kernel, a bzImage or an arm64 Image; "all" is the matrix (%[3]s), "debian"
and "oci" its parts.
Kernels are cached in $VMTEST_CACHE_DIR, else $XDG_CACHE_HOME/skbstore-vmtest.

Environment:
  VMTEST_ACCEL      auto (default), kvm or tcg; auto probes KVM with a short real
                    boot and falls back to software emulation (tcg)
  VMTEST_QEMU       the qemu-system binary for x86-64 guests (default qemu-system-x86_64)
  VMTEST_QEMU_ARM64 the one for arm64 guests (default qemu-system-aarch64)
  VMTEST_CACHE_DIR  where kernels and images are cached
  VMTEST_OCI_REPO   the OCI repository of kernels (default ghcr.io/cilium/ci-kernels;
                    empty: none), e.g. a mirror; a moving tag is looked up again
                    after 24 hours, and results record the image digest
  VMTEST_SRC        a checkout of this project to build the (smaller) guest agent
                    from when vmtest runs outside it; without one, the vmtest
                    program itself is the agent (of guests of its own
                    architecture: other architectures need the source)

Run "vmtest run -h", "vmtest exec -h" or "vmtest bench -h" for flags.
`

func main() {
	// In a guest whose image was made of this program (no source to build
	// the agent from, see images.BaseOptions.Self), it is the agent.
	if base := filepath.Base(os.Args[0]); os.Getpid() == 1 || base == "vmtest-guest" || base == "modprobe" {
		guest.Main()
	}
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var err error
	code := 0
	switch os.Args[1] {
	case "run":
		code, err = runCmd(ctx, os.Args[2:])
	case "exec":
		code, err = execCmd(ctx, os.Args[2:])
	case "kernels":
		err = kernelsCmd(ctx, os.Args[2:])
	case "bench":
		err = benchCmd(ctx, os.Args[2:])
	case "shell":
		code, err = shellCmd(ctx, os.Args[2:])
	case "help", "-h", "-help", "--help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "vmtest: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "vmtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

var errUsage = errors.New("usage")

// usage is the help text, with the kernel list from the kernels package.
var usage = fmt.Sprintf(usageText, strings.Join(kernels.Available(), ", "), kernels.DefaultVersion, strings.Join(kernels.MatrixNames(""), ", "))
