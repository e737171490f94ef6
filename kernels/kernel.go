package kernels

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// Kernel is a bootable kernel on the host's disk: its image, config and
// modules. Everything it points to stays valid while the cache entry exists.
type Kernel struct {
	Name       string       // what was asked for, e.g. "6.1", "6.12/arm64"
	Arch       string       // architecture of the image (GOARCH's name): "amd64" or "arm64"
	Release    string       // `uname -r` of this kernel, e.g. "6.1.0-47-cloud-amd64"
	Source     string       // "debian", "local" or "oci"
	Packages   []PackageRef // exact Debian packages used; for OCI the image (Version: digest), then its layers; nil for local
	Image      string       // absolute path of the bootable image: an x86 bzImage or a plain (uncompressed) arm64 Image
	Config     string       // absolute path of the kernel config, "" if unknown
	ModulesDir string       // absolute path of lib/modules/<Release> (has modules.dep), "" if none
	Vmlinux    string       // absolute path of the vmlinux with debug info, "" until there is one (Cache.Symbols)
	Selftests  string       // absolute path of the BPF selftests' objects (OCI -selftests images), "" if none
}

// PackageRef identifies one downloaded Debian package exactly.
type PackageRef struct {
	Name    string
	Version string
	SHA256  string
	Size    int64
}

// Sources a Kernel can come from.
const (
	SourceDebian = "debian"
	SourceLocal  = "local"
	SourceOCI    = "oci"
)

// ConfigValue returns the value of a kernel config option, e.g.
// "CONFIG_DEBUG_INFO_BTF" -> "y" (the "CONFIG_" prefix may be left out).
// String values are returned without their quotes. An option that is
// absent or "is not set" gives ("", false, nil); a kernel without a known
// config gives an error.
func (k *Kernel) ConfigValue(key string) (string, bool, error) {
	if k.Config == "" {
		return "", false, fmt.Errorf("kernel %s: config of %s is unknown", k.Name, key)
	}
	if !strings.HasPrefix(key, "CONFIG_") {
		key = "CONFIG_" + key
	}
	f, err := os.Open(k.Config)
	if err != nil {
		return "", false, fmt.Errorf("kernel %s: read config: %w", k.Name, err)
	}
	defer f.Close()
	prefix := key + "="
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, prefix); ok {
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = strings.ReplaceAll(v[1:len(v)-1], `\"`, `"`)
			}
			return v, true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", false, fmt.Errorf("kernel %s: read config %s: %w", k.Name, k.Config, err)
	}
	return "", false, nil
}
