package kernels

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// localKernel describes a kernel on the host's disk, used in place: a
// bzImage or arm64 Image file, or a directory holding one (vmlinuz,
// bzImage, Image, boot/vmlinuz-<release> or a build tree's
// arch/x86/boot/bzImage or arch/arm64/boot/Image) with its config and
// lib/modules/<release> nearby. The image says the architecture.
func localKernel(name, path string) (*Kernel, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", name, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		if base, arch, ok := cutArch(name); ok && errors.Is(err, fs.ErrNotExist) {
			if _, perr := parseBase(base); perr != nil {
				return nil, fmt.Errorf("kernel %s: no such file, nor a kernel name for %s: %w", name, arch, perr)
			}
		}
		return nil, fmt.Errorf("kernel %s: %w", name, err)
	}
	dir, image := abs, ""
	if st.IsDir() {
		cands := []string{"vmlinuz", "bzImage", "Image", "arch/x86/boot/bzImage", "arch/arm64/boot/Image"}
		if m, _ := filepath.Glob(filepath.Join(abs, "boot", "vmlinuz-*")); len(m) == 1 {
			cands = append(cands, filepath.Join("boot", filepath.Base(m[0])))
		}
		for _, c := range cands {
			if fi, err := os.Stat(filepath.Join(abs, c)); err == nil && fi.Mode().IsRegular() {
				image = filepath.Join(abs, c)
				break
			}
		}
		if image == "" {
			return nil, fmt.Errorf("kernel %s: directory has no kernel image (looked for %s, boot/vmlinuz-*)", name, strings.Join(cands, ", "))
		}
	} else {
		image, dir = abs, filepath.Dir(abs)
	}
	arch, err := ImageArch(image)
	if err != nil {
		return nil, err // names the image
	}
	release, err := imageRelease(image)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", name, err)
	}
	k := &Kernel{Name: name, Arch: arch, Release: release, Source: SourceLocal, Image: image}
	// A build tree's vmlinux is at its top; a packaged one in boot/ or
	// under /usr/lib/debug.
	vmlinuxes := []string{filepath.Join(filepath.Dir(image), "vmlinux"), filepath.Join(dir, "vmlinux"),
		filepath.Join(filepath.Dir(image), "vmlinux-"+release), filepath.Join("/usr/lib/debug/boot", "vmlinux-"+release)}
	for _, v := range vmlinuxes {
		if fi, err := os.Stat(v); err == nil && fi.Mode().IsRegular() {
			k.Vmlinux = v
			break
		}
	}
	roots := []string{dir, filepath.Dir(dir)} // the image may sit in DIR/boot
	if filepath.Base(dir) == "boot" && filepath.Dir(dir) == "/" {
		roots = []string{"/"} // /boot/vmlinuz-X: the host's own kernel
	}
	for _, root := range roots {
		for _, c := range []string{"config-" + release, "boot/config-" + release, "config", ".config"} {
			if fi, err := os.Stat(filepath.Join(root, c)); err == nil && fi.Mode().IsRegular() && k.Config == "" {
				k.Config = filepath.Join(root, c)
			}
		}
		for _, c := range []string{"lib/modules/" + release, "usr/lib/modules/" + release} {
			if fi, err := os.Stat(filepath.Join(root, c)); err == nil && fi.IsDir() && k.ModulesDir == "" {
				k.ModulesDir = filepath.Join(root, c)
			}
		}
	}
	return k, nil
}
