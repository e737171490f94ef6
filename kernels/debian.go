package kernels

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Default Debian archives; Cache.Mirror and Cache.SecurityMirror override.
const (
	DefaultMirror         = "http://deb.debian.org/debian"
	DefaultSecurityMirror = "http://deb.debian.org/debian-security"
)

// debSeries is one kernel series and the Debian suites that carry it; the
// newest package version found in any of them wins.
type debSeries struct {
	version string
	suites  []debSuite
}

type debSuite struct {
	name     string
	security bool // on the security archive
}

var debianSeries = []debSeries{
	{"5.10", []debSuite{{"bullseye", false}, {"bullseye-security", true}}},
	{"6.1", []debSuite{{"bookworm", false}, {"bookworm-updates", false}, {"bookworm-security", true}}},
	{"6.12", []debSuite{{"trixie", false}, {"trixie-security", true}, {"bookworm-backports", false}}},
	{"7.2", []debSuite{{"sid", false}}},
	{"7.3", []debSuite{{"experimental", false}}},
}

func findSeries(version string) (debSeries, bool) {
	for _, s := range debianSeries {
		if s.version == version {
			return s, true
		}
	}
	return debSeries{}, false
}

// imagePackageRE matches the linux-image packages of one series, flavour
// and architecture: linux-image-5.10.0-46-cloud-amd64-unsigned,
// linux-image-6.12.115+deb13.1-cloud-amd64, linux-image-7.3-cloud-amd64,
// linux-image-6.1.0-41-cloud-arm64. The ABI part has no letters but
// "deb"/"rc", so "-amd64" (generic) does not match the cloud or rt
// packages, and the name must end in the architecture (or -unsigned), so
// "-arm64" does not match arm64's -arm64-16k flavour.
func imagePackageRE(version, flavour, arch string) *regexp.Regexp {
	return regexp.MustCompile(`^linux-image-` + regexp.QuoteMeta(version) +
		`(?:\.[0-9]+)*(?:-rc[0-9]+)?(?:-[0-9]+)?(?:\+deb[0-9]+(?:\.[0-9]+)?)?-` +
		regexp.QuoteMeta(flavourSuffix(flavour, arch)) + `(?:-unsigned)?$`)
}

// rankImages orders candidate packages best first: newest version first
// and, at equal versions, the -unsigned package (same kernel, no signature
// to carry around).
func rankImages(stanzas []debPackage) []debPackage {
	ranked := slices.Clone(stanzas)
	slices.SortStableFunc(ranked, func(a, b debPackage) int {
		if c := compareDebVersions(b.Version, a.Version); c != 0 {
			return c
		}
		ua, ub := strings.HasSuffix(a.Package, "-unsigned"), strings.HasSuffix(b.Package, "-unsigned")
		switch {
		case ua && !ub:
			return -1
		case ub && !ua:
			return 1
		}
		return strings.Compare(a.Package, b.Package)
	})
	return ranked
}

// splitParts lists the packages a 7.x linux-image meta package pulls in
// (linux-base-*, linux-binary-*, linux-modules-*) with their exact versions.
// Older kernels have none: their linux-image package holds everything.
func splitParts(p debPackage) (map[string]string, error) {
	parts := map[string]string{}
	for _, alt := range strings.Split(p.Depends, ",") {
		dep := strings.TrimSpace(strings.Split(alt, "|")[0])
		name, ver, _ := strings.Cut(dep, " ")
		if !strings.HasPrefix(name, "linux-base-") && !strings.HasPrefix(name, "linux-binary-") && !strings.HasPrefix(name, "linux-modules-") {
			continue
		}
		ver = strings.TrimSpace(ver)
		v, ok := strings.CutPrefix(ver, "(=")
		if !ok || !strings.HasSuffix(v, ")") {
			return nil, fmt.Errorf("%s %s: dependency %q is not pinned to one version", p.Package, p.Version, dep)
		}
		parts[name] = strings.TrimSpace(strings.TrimSuffix(v, ")"))
	}
	return parts, nil
}

// debPackage is one stanza of a Packages index, as apt-cache show prints it.
type debPackage struct {
	Package  string
	Version  string
	Depends  string
	Filename string
	Size     int64
	SHA256   string
}

func (p debPackage) ref() PackageRef {
	return PackageRef{Name: p.Package, Version: p.Version, SHA256: p.SHA256, Size: p.Size}
}

// parseStanzas parses apt-cache show output.
func parseStanzas(out string) ([]debPackage, error) {
	var pkgs []debPackage
	for _, block := range strings.Split(strings.ReplaceAll(out, "\r\n", "\n"), "\n\n") {
		if strings.TrimSpace(block) == "" {
			continue
		}
		var p debPackage
		for _, line := range strings.Split(block, "\n") {
			if line == "" || line[0] == ' ' || line[0] == '\t' {
				continue // continuation line (Description)
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			v = strings.TrimSpace(v)
			switch k {
			case "Package":
				p.Package = v
			case "Version":
				p.Version = v
			case "Depends":
				p.Depends = v
			case "Filename":
				p.Filename = v
			case "SHA256":
				p.SHA256 = strings.ToLower(v)
			case "Size":
				if _, err := fmt.Sscan(v, &p.Size); err != nil {
					return nil, fmt.Errorf("package %s: bad Size %q", p.Package, v)
				}
			}
		}
		if p.Package == "" || p.Version == "" {
			continue
		}
		if len(p.SHA256) != 64 || p.Size <= 0 {
			return nil, fmt.Errorf("package %s %s: index has no SHA256 or Size, cannot verify it", p.Package, p.Version)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs, nil
}
