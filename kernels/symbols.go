package kernels

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// treeVmlinux is where a Debian kernel's tree keeps its vmlinux with debug
// info once Symbols fetched it.
const treeVmlinux = "vmlinux"

// ErrNoSymbols means no vmlinux with debug info is known for a kernel.
var ErrNoSymbols = errors.New("no vmlinux with debug info")

// Symbols returns the path of the uncompressed vmlinux, with debug info
// (DWARF), of exactly the build k boots: what gdb needs to name the
// functions, variables and types of a guest's kernel. A Debian kernel's
// comes from the -dbg package of its exact version (some 300 MB to
// download, of which only vmlinux, about 600 MB, is kept beside the image);
// a local kernel's is the vmlinux found beside it (Kernel.Vmlinux). With
// Offline only a vmlinux already on disk is returned. Before it is used the
// file must be an ELF of the kernel's architecture (x86-64 or AArch64) with
// .debug_info whose .rodata holds the banner "Linux version <Release> ".
func (c *Cache) Symbols(ctx context.Context, k *Kernel) (string, error) {
	switch k.Source {
	case SourceDebian:
		p, err := c.debianSymbols(ctx, k)
		if err != nil {
			return "", fmt.Errorf("symbols of kernel %s: %w", k.Name, err)
		}
		return p, nil
	case SourceLocal:
		if k.Vmlinux == "" {
			return "", fmt.Errorf("symbols of kernel %s: %w: put the vmlinux of this build beside its image (or at the top of its build tree)", k.Name, ErrNoSymbols)
		}
		if err := checkVmlinux(k.Vmlinux, k.Image); err != nil {
			return "", fmt.Errorf("symbols of kernel %s: %w", k.Name, err)
		}
		return k.Vmlinux, nil
	case SourceOCI:
		p, err := c.ociSymbols(ctx, k)
		if err != nil {
			return "", fmt.Errorf("symbols of kernel %s: %w", k.Name, err)
		}
		return p, nil
	default:
		return "", fmt.Errorf("symbols of kernel %s: %w: not offered for %s kernels", k.Name, ErrNoSymbols, k.Source)
	}
}

// ociSymbols takes the vmlinux of the image's -debug sibling (6.6 ->
// 6.6-debug), which must be the same build, into the kernel's tree.
func (c *Cache) ociSymbols(ctx context.Context, k *Kernel) (string, error) {
	dst := filepath.Join(filepath.Dir(k.Image), treeVmlinux)
	if checkVmlinux(dst, k.Image) == nil {
		return dst, nil
	}
	if c.Offline {
		return "", fmt.Errorf("%w cached, and offline", ErrNoSymbols)
	}
	s, err := parseName(k.Name)
	if err != nil {
		return "", err
	}
	debugTag := strings.TrimSuffix(s.tag, "-"+tagSelftests) + "-" + tagDebug
	dk, err := c.Get(ctx, "oci:"+debugTag+archSuffix(kernelArch(k, s)))
	if err != nil {
		return "", err
	}
	if dk.Vmlinux == "" {
		return "", fmt.Errorf("%w: %s holds no boot/vmlinux", ErrNoSymbols, dk.Packages[0].Name)
	}
	if err := checkVmlinux(dk.Vmlinux, k.Image); err != nil {
		return "", fmt.Errorf("%s (%s): %w (has the tag moved since? vmtest kernels -fetch with a newer image)", dk.Packages[0].Name, dk.Packages[0].Version, err)
	}
	tmp := dst + ".tmp"
	os.Remove(tmp)
	if err := os.Link(dk.Vmlinux, tmp); err != nil {
		if err := copyFile(dk.Vmlinux, tmp); err != nil {
			return "", err
		}
	}
	return dst, os.Rename(tmp, dst)
}

func (c *Cache) debianSymbols(ctx context.Context, k *Kernel) (string, error) {
	tree := filepath.Dir(k.Image)
	dst := filepath.Join(tree, treeVmlinux)
	if checkVmlinux(dst, k.Image) == nil {
		return dst, nil
	}
	if c.Offline {
		return "", fmt.Errorf("%w cached, and offline", ErrNoSymbols)
	}
	if len(k.Packages) == 0 {
		return "", errors.New("kernel has no package record")
	}
	s, err := parseName(k.Name)
	if err != nil {
		return "", err
	}
	series, ok := findSeries(s.version)
	if !ok {
		return "", unknownVersionError(k.Name, "")
	}
	unlock, err := lockFile(ctx, c.lockPath("symbols-"+filepath.Base(tree)), "to fetch the symbols of "+k.Release, c.progress())
	if err != nil {
		return "", err
	}
	defer unlock()
	if checkVmlinux(dst, k.Image) == nil {
		return dst, nil // fetched while we waited
	}
	repo, err := newAptRepo(c, series, kernelArch(k, s))
	if err != nil {
		return "", err
	}
	ref, err := c.findDebugPackage(ctx, series, repo, k.Packages[0])
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(c.tmpDir(), 0o755); err != nil {
		return "", err
	}
	debs, err := c.ensureDebs(ctx, repo, []PackageRef{ref})
	if err != nil {
		return "", err
	}
	// The package is mostly the modules' debug files; only vmlinux is kept.
	defer os.Remove(debs[0])
	c.logf("extracting vmlinux from %s", ref.Name)
	t := time.Now()
	if err := extractVmlinux(ctx, debs[0], k.Release, k.Image, dst); err != nil {
		return "", fmt.Errorf("%s %s: %w", ref.Name, ref.Version, err)
	}
	c.logf("extracted vmlinux of %s in %.1fs", k.Release, time.Since(t).Seconds())
	return dst, nil
}

// findDebugPackage finds the -dbg package built with image (same source
// version), updating the package lists once if they do not list it.
func (c *Cache) findDebugPackage(ctx context.Context, series debSeries, repo *aptRepo, image PackageRef) (PackageRef, error) {
	name := strings.TrimSuffix(image.Name, "-unsigned") + "-dbg"
	unlock, err := lockFile(ctx, c.lockPath(repo.lockName()), "to use the package lists of "+repo.label, c.progress())
	if err != nil {
		return PackageRef{}, err
	}
	defer unlock()
	if err := repo.setup(); err != nil {
		return PackageRef{}, fmt.Errorf("set up private apt in %s: %w", repo.dir, err)
	}
	for updated := false; ; updated = true {
		if repo.hasLists() {
			pkgs, _ := repo.show(ctx, name) // an unknown name is an error to apt-cache
			for _, p := range pkgs {
				if p.Package == name && p.Version == image.Version {
					return p.ref(), nil
				}
			}
		}
		if updated {
			return PackageRef{}, fmt.Errorf("%w: the archive lists no %s %s (the debug package of %s)", ErrNoSymbols, name, image.Version, image.Name)
		}
		if err := c.updateLists(ctx, series, repo); err != nil {
			return PackageRef{}, fmt.Errorf("update package lists: %w", err)
		}
	}
}

// extractVmlinux copies the vmlinux of release out of a -dbg package into
// dst (through a temporary file beside it), reading the package only up to
// it, and checks it.
func extractVmlinux(ctx context.Context, deb, release, image, dst string) error {
	dpkgDeb, err := exec.LookPath("dpkg-deb")
	if err != nil {
		return errors.New("dpkg-deb not found: install the dpkg package")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, dpkgDeb, "--fsys-tarfile", deb)
	cmd.Stderr = &stderr
	// dpkg-deb forks its decompressor: stopping early must stop both.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	want := map[string]bool{
		"usr/lib/debug/boot/vmlinux-" + release:                 true,
		"usr/lib/debug/lib/modules/" + release + "/vmlinux":     true,
		"usr/lib/debug/usr/lib/modules/" + release + "/vmlinux": true,
	}
	tr := tar.NewReader(out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return fmt.Errorf("%w: the package holds no vmlinux of %s (looked for usr/lib/debug/boot/vmlinux-%s)", ErrNoSymbols, release, release)
		}
		if err != nil {
			return fmt.Errorf("read package: %w: %s", err, tail(stderr.String()))
		}
		if h.Typeflag != tar.TypeReg || !want[strings.TrimPrefix(h.Name, "./")] {
			continue
		}
		tmp, err := os.CreateTemp(filepath.Dir(dst), ".vmlinux-*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		_, err = io.Copy(tmp, tr)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("extract %s: %w", h.Name, err)
		}
		if err := checkVmlinux(tmp.Name(), image); err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		return os.Rename(tmp.Name(), dst)
	}
}

// kernelArch is k's architecture: Kernel.Arch, else what its name says.
func kernelArch(k *Kernel, s spec) string {
	if k.Arch != "" {
		return k.Arch
	}
	return s.arch
}

// elfMachines are the ELF machines of vmlinux files by architecture, with
// the name errors give them.
var elfMachines = map[string]struct {
	machine elf.Machine
	name    string
}{
	"amd64": {elf.EM_X86_64, "x86-64"},
	"arm64": {elf.EM_AARCH64, "arm64 (AArch64)"},
}

// checkVmlinux checks that path is a vmlinux with DWARF of the very build
// of the kernel image at image (a bzImage or an arm64 Image): its banner
// ("Linux version <release> (<builder>) (<compiler>) <UTS_VERSION>") must
// agree with the image's version string ("<release> (<builder>)
// <UTS_VERSION>"), whose UTS_VERSION dates the build, and its machine with
// the image's architecture.
func checkVmlinux(path, image string) error {
	arch, err := ImageArch(image)
	if err != nil {
		return err
	}
	version, err := imageVersion(image)
	if err != nil {
		return err
	}
	release, rest, _ := strings.Cut(version, " ")
	want := [][]byte{[]byte("Linux version " + release + " ")}
	if builder, uts, ok := strings.Cut(rest, ") "); ok && strings.HasPrefix(builder, "(") {
		want = [][]byte{[]byte("Linux version " + release + " " + builder + ") ("), []byte(") " + uts)}
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNoSymbols, path, err)
	}
	defer f.Close()
	if want := elfMachines[arch]; f.Machine != want.machine || f.Type != elf.ET_EXEC {
		return fmt.Errorf("%w: %s is a %s %s, not an %s kernel (the image is %s)", ErrNoSymbols, path, f.Machine, f.Type, want.name, arch)
	}
	if f.Section(".debug_info") == nil {
		return fmt.Errorf("%w: %s has no .debug_info (a stripped vmlinux, or built without CONFIG_DEBUG_INFO)", ErrNoSymbols, path)
	}
	ro := f.Section(".rodata")
	if ro == nil {
		return fmt.Errorf("%w: %s has no .rodata", ErrNoSymbols, path)
	}
	data, err := ro.Data()
	if err != nil {
		return fmt.Errorf("%w: %s: read .rodata: %w", ErrNoSymbols, path, err)
	}
	// A kernel has more than one banner (/proc/version's has no build
	// number); one must match.
	for rest := data; ; {
		i := bytes.Index(rest, want[0])
		if i < 0 {
			return fmt.Errorf("%w: %s is not the build of the kernel image (%s): its banner names another release or build", ErrNoSymbols, path, version)
		}
		line, _, _ := bytes.Cut(rest[i:], []byte("\n"))
		if len(want) == 1 || bytes.HasSuffix(line, want[1]) {
			break
		}
		rest = rest[i+len(want[0]):]
	}
	return nil
}
