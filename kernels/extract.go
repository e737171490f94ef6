package kernels

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Layout of an extracted kernel tree in the cache.
const (
	treeImage     = "vmlinuz"
	treeConfig    = "config"
	treeSystemMap = "System.map"
	treeMarker    = "complete"
	treeSelftests = "selftests-bpf"
)

// imageSelftestsDir is where cilium/ci-kernels' -selftests images keep the
// BPF selftests' objects.
const imageSelftestsDir = "usr/src/linux/tools/testing/selftests/bpf"

func treeModulesRel(release string) string { return filepath.Join("lib", "modules", release) }

// assembleTree unpacks the .deb files into stage and lays them out with
// arrangeTree.
func assembleTree(ctx context.Context, stage string, debs []string) (release, arch string, err error) {
	dpkgDeb, err := exec.LookPath("dpkg-deb")
	if err != nil {
		return "", "", errors.New("dpkg-deb not found: fetching Debian kernels needs it (install the dpkg package, or use a local kernel path)")
	}
	raw := filepath.Join(stage, "raw")
	for _, deb := range debs {
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, dpkgDeb, "-x", deb, raw)
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			if ctx.Err() != nil {
				return "", "", ctx.Err()
			}
			return "", "", fmt.Errorf("dpkg-deb -x %s: %w: %s", deb, err, tail(stderr.String()))
		}
	}
	return arrangeTree(stage, raw)
}

// arrangeTree moves what a VM needs from an unpacked file system image
// (raw, inside stage) into one layout, whatever the packaging, and drops
// the rest:
//
//	vmlinuz, config, System.map, lib/modules/<release>/...
//
// Debian's kernels up to 6.x ship boot/vmlinuz-<rel> and lib/modules/<rel>;
// 7.x ships everything under usr/lib/modules/<rel>; OCI kernel images ship
// boot/vmlinuz and maybe usr/lib/modules/<rel>. A kernel without modules
// gets no lib/modules; its release comes from the image (a bzImage's header,
// an arm64 Image's banner). A gzip-compressed image (as arm64 kernels may
// be packaged) is stored decompressed: vmlinuz is always an x86 bzImage or a
// plain arm64 Image, whose architecture arrangeTree returns.
func arrangeTree(stage, raw string) (release, arch string, err error) {
	release, err = arrangeFiles(stage, raw)
	if err != nil {
		return "", "", err
	}
	img := filepath.Join(stage, treeImage)
	if _, err := os.Stat(img); err != nil {
		return "", "", fmt.Errorf("no kernel image (boot/vmlinuz*) found: %w", err)
	}
	if err := decompressImage(img); err != nil {
		return "", "", err
	}
	hdr, _, err := readImageHeader(img)
	if err != nil {
		return "", "", err
	}
	if arch = headerArch(hdr); arch == "" {
		what := "no \"HdrS\" at 0x202, no \"ARM\\x64\" at 0x38"
		if kind := fileKind(hdr); kind != "" {
			what = kind
		}
		return "", "", fmt.Errorf("kernel image is neither an x86 bzImage nor an arm64 Image (%s)", what)
	}
	if release == "" {
		if release, err = imageRelease(img); err != nil {
			return "", "", err
		}
	}
	return release, arch, nil
}

// arrangeFiles does arrangeTree's moving; release is "" for a kernel
// without modules.
func arrangeFiles(stage, raw string) (release string, err error) {
	modRoots := []string{filepath.Join(raw, "lib", "modules"), filepath.Join(raw, "usr", "lib", "modules")}
	releases := map[string]bool{}
	for _, r := range modRoots {
		ents, err := os.ReadDir(r)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		for _, e := range ents {
			if e.IsDir() {
				releases[e.Name()] = true
			}
		}
	}
	if len(releases) > 1 {
		return "", fmt.Errorf("found %d kernel releases under lib/modules, want 1", len(releases))
	}
	for r := range releases {
		release = r
	}

	var modDir string
	if release != "" {
		modDir = filepath.Join(stage, treeModulesRel(release))
		if err := os.MkdirAll(modDir, 0o755); err != nil {
			return "", err
		}
		for _, r := range modRoots {
			src := filepath.Join(r, release)
			ents, err := os.ReadDir(src)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			} else if err != nil {
				return "", err
			}
			for _, e := range ents {
				if err := os.Rename(filepath.Join(src, e.Name()), filepath.Join(modDir, e.Name())); err != nil {
					return "", fmt.Errorf("clash on lib/modules/%s/%s: %w", release, e.Name(), err)
				}
			}
		}
	}
	// The image, config and map move out of the modules dir so it holds only
	// what belongs in a guest's /lib/modules.
	cands := func(name string) []string {
		var c []string
		if release != "" {
			c = append(c, filepath.Join(raw, "boot", name+"-"+release), filepath.Join(modDir, name))
		}
		c = append(c, filepath.Join(raw, "boot", name), filepath.Join(raw, name))
		if m, _ := filepath.Glob(filepath.Join(raw, "boot", name+"-*")); len(m) == 1 {
			c = append(c, m[0])
		}
		return c
	}
	for _, f := range []struct{ dst, name string }{
		{treeImage, "vmlinuz"}, {treeConfig, "config"}, {treeSystemMap, "System.map"},
		{treeVmlinux, "vmlinux"}, // OCI -debug images
	} {
		for _, src := range cands(f.name) {
			if err := os.Rename(src, filepath.Join(stage, f.dst)); err == nil {
				break
			} else if !errors.Is(err, fs.ErrNotExist) {
				return "", err
			}
		}
	}
	// OCI -selftests images: the BPF selftests' objects.
	if err := os.Rename(filepath.Join(raw, filepath.FromSlash(imageSelftestsDir)), filepath.Join(stage, treeSelftests)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if err := os.RemoveAll(raw); err != nil {
		return "", err
	}
	return release, nil
}

// releaseFromPackage is what a linux-image package name says `uname -r` is.
func releaseFromPackage(name string) string {
	return strings.TrimSuffix(strings.TrimPrefix(name, "linux-image-"), "-unsigned")
}
