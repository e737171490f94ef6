package kernels

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// DefaultVersion is the kernel used when none is asked for.
const DefaultVersion = "6.1"

// DefaultFlavour is the Debian kernel flavour used when a name has no
// "-flavour" suffix: the cloud flavour boots fastest and is smallest.
const DefaultFlavour = "cloud"

// ErrUnknownVersion is wrapped by the error Get returns for a well-formed
// version that no configured source offers.
var ErrUnknownVersion = errors.New("unknown kernel version")

// ErrBadName is wrapped by the error Get returns for a name that is neither a
// version nor a path.
var ErrBadName = errors.New("bad kernel name")

// DefaultArch is the architecture of a kernel whose name has no "/ARCH"
// suffix. Architectures are named as GOARCH names them.
const DefaultArch = "amd64"

// Arches lists the architectures a kernel name may ask for with a "/ARCH"
// suffix ("6.12/arm64"), the default first.
func Arches() []string { return []string{DefaultArch, "arm64"} }

// flavourPrefix maps a flavour to what precedes the architecture at the
// tail of Debian's package names: linux-image-6.1.0-41-cloud-arm64.
var flavourPrefix = map[string]string{
	"cloud":   "cloud-",
	"generic": "",
	"rt":      "rt-",
}

// flavourSuffix is the tail of Debian's package names for a flavour and
// architecture: "cloud-amd64", "arm64" (generic), "rt-arm64".
func flavourSuffix(flavour, arch string) string { return flavourPrefix[flavour] + arch }

// Flavours lists the flavour suffixes a Debian version name may carry.
func Flavours() []string {
	fs := make([]string, 0, len(flavourPrefix))
	for f := range flavourPrefix {
		fs = append(fs, f)
	}
	slices.Sort(fs)
	return fs
}

// Available lists the versions the built-in (Debian) source offers, oldest
// first.
func Available() []string {
	vs := make([]string, len(debianSeries))
	for i, s := range debianSeries {
		vs[i] = s.version
	}
	return vs
}

// spec is a parsed kernel name.
type spec struct {
	name    string // as asked
	local   string // path, for a local kernel
	source  string // "debian" or "oci" when the name forces one ("oci:6.6"), else ""
	version string // "6.1" when the name has the Debian form MAJOR.MINOR[-FLAVOUR]
	flavour string // Debian flavour: "cloud"
	tag     string // the OCI tag: "6.6", "6.6.134", "stable", "6.6-debug"; "" when only Debian can serve it
	digest  string // "sha256:<hex>" when the name pins an OCI image
	arch    string // DefaultArch unless the name ends in "/ARCH"; "" for a local kernel (its image decides)
}

// OCI tag suffixes of cilium/ci-kernels' images: -debug adds a vmlinux
// with DWARF, -selftests the BPF selftests' objects.
const (
	tagDebug     = "debug"
	tagSelftests = "selftests"
)

// MovingTags are the OCI tags that follow the kernel's releases.
var MovingTags = []string{"mainline", "stable", "longterm"}

// canonical is the cache's name for a Debian version: the default flavour
// and the default architecture are left out, so "6.1", "6.1-cloud" and
// "6.1/amd64" share one cache entry; "6.1/arm64" is another. Where it
// becomes a file name, fileName maps its "/".
func (s spec) canonical() string {
	c := s.version
	if s.flavour != DefaultFlavour {
		c += "-" + s.flavour
	}
	return c + archSuffix(s.arch)
}

// archSuffix is what a canonical name of arch ends in: "" for the default
// architecture (so that caches made before arm64 existed stay valid),
// "/arm64" for others.
func archSuffix(arch string) string {
	if arch == "" || arch == DefaultArch {
		return ""
	}
	return "/" + arch
}

// fileName turns a canonical name into a file name: "6.1/arm64" ->
// "6.1_arm64". No name has a "_" of its own, so no two names meet.
func fileName(canonical string) string { return strings.ReplaceAll(canonical, "/", "_") }

// cutArch splits a "/ARCH" suffix naming a known architecture off name.
func cutArch(name string) (base, arch string, ok bool) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 || !slices.Contains(Arches(), name[i+1:]) {
		return name, "", false
	}
	return name[:i], name[i+1:], true
}

// SplitArch splits the architecture off a kernel name: "6.12/arm64" ->
// ("6.12", "arm64"), "oci:6.6/arm64" -> ("oci:6.6", "arm64"). A name without
// one gives arch "" (it means DefaultArch), and so does a local path, even
// one ending in an architecture's name ("./6.1/arm64", "build/arm64"): what
// precedes the suffix must be a kernel name, not a path.
func SplitArch(name string) (base, arch string) {
	if b, a, ok := cutArch(name); ok {
		if _, err := parseBase(b); err == nil {
			return b, a
		}
	}
	return name, ""
}

// debian reports whether Debian may serve the name.
func (s spec) debian() bool { return s.version != "" && s.source != SourceOCI }

// oci reports whether an OCI repository may serve the name.
func (s spec) oci() bool { return s.tag != "" && s.source != SourceDebian }

var (
	nameRE   = regexp.MustCompile(`^(?:([0-9]+\.[0-9]+)(\.[0-9]+)?|(` + strings.Join(MovingTags, "|") + `))(?:-([a-z]+))?$`)
	digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
)

// parseName splits a name into a local path, or a version or tag for the
// sources. It checks syntax only: whether a source has it is decided
// later. The forms are:
//
//	6.1, 6.1-generic      Debian's kernel of that series (flavour cloud by default), else the OCI tag
//	6.6.134, stable       OCI tags only (also mainline, longterm)
//	6.6-debug, 6.6-selftests   OCI images with a vmlinux with DWARF / the BPF selftests
//	6.6@sha256:<hex>      exactly that OCI image (its tag is a reminder only)
//	oci:6.1, debian:6.1   one source only
//	6.12/arm64, oci:6.6/arm64, stable/arm64   any of these for another architecture (see Arches)
//	./bzImage, /boot/...  a local kernel (the name contains a "/")
//
// A name ending in "/ARCH" is a name for that architecture when what
// precedes the suffix is a name of the other forms; otherwise it is a local
// path: a kernel in a directory named 6.1/arm64 must be given as
// ./6.1/arm64.
func parseName(name string) (spec, error) {
	if base, arch, ok := cutArch(name); ok {
		if s, err := parseBase(base); err == nil {
			s.name, s.arch = name, arch
			return s, nil
		}
	}
	if strings.ContainsRune(name, '/') {
		return spec{name: name, local: name}, nil
	}
	s, err := parseBase(name)
	if err != nil {
		return spec{}, err
	}
	s.arch = DefaultArch
	return s, nil
}

// parseBase parses a name without an architecture suffix or a path.
func parseBase(name string) (spec, error) {
	bad := func(why string) (spec, error) {
		return spec{}, fmt.Errorf("kernel %q: %w: %s", name, ErrBadName, why)
	}
	s := spec{name: name}
	rest := name
	if src, r, ok := strings.Cut(rest, ":"); ok && (src == SourceDebian || src == SourceOCI) {
		s.source, rest = src, r
	}
	if r, d, ok := strings.Cut(rest, "@"); ok {
		if !digestRE.MatchString(d) {
			return bad(fmt.Sprintf("digest %q: want sha256: and 64 hex digits", d))
		}
		if s.source == SourceDebian {
			return bad("a digest names an OCI image, not a Debian package")
		}
		s.source, s.digest, rest = SourceOCI, d, r
	}
	m := nameRE.FindStringSubmatch(rest)
	if m == nil {
		return bad(fmt.Sprintf("want a version MAJOR.MINOR[-FLAVOUR] (e.g. %s or %s-generic), an OCI tag (6.6.134, %s, 6.6-debug), "+
			"maybe pinned (6.6@sha256:...), any of them maybe followed by an architecture (/%s), "+
			"or a path to a kernel image (containing a \"/\", e.g. ./bzImage)",
			DefaultVersion, DefaultVersion, strings.Join(MovingTags, ", "), strings.Join(Arches()[1:], ", /")))
	}
	minor, patch, moving, suffix := m[1], m[2], m[3], m[4]
	_, isFlavour := flavourPrefix[suffix]
	switch {
	case suffix == "" || isFlavour:
		if minor != "" && patch == "" && s.source != SourceOCI || isFlavour {
			s.version, s.flavour = minor, suffix
			if s.flavour == "" {
				s.flavour = DefaultFlavour
			}
		}
		if isFlavour && (patch != "" || moving != "") {
			return bad(fmt.Sprintf("flavour %q is Debian's, and Debian's kernels are named MAJOR.MINOR", suffix))
		}
		if isFlavour && s.source == SourceOCI {
			return bad(fmt.Sprintf("flavour %q is Debian's; OCI images are named by their tags", suffix))
		}
		if !isFlavour {
			s.tag = rest
		}
	case suffix == tagDebug || suffix == tagSelftests:
		if s.source == SourceDebian {
			return bad(fmt.Sprintf("-%s names an OCI image; Debian's symbols come with vmtest kernels -fetch V -debug", suffix))
		}
		s.tag = rest
	default:
		return bad(fmt.Sprintf("unknown flavour or tag suffix %q (Debian's flavours: %s; OCI suffixes: %s, %s)",
			suffix, strings.Join(Flavours(), ", "), tagDebug, tagSelftests))
	}
	if s.source == SourceDebian && s.version == "" {
		return bad("Debian's kernels are named MAJOR.MINOR[-FLAVOUR]")
	}
	return s, nil
}

// unknownVersionError explains which versions exist and how to get another;
// ociRepo is the OCI source that was asked, "" if none.
func unknownVersionError(name, ociRepo string) error {
	oci := fmt.Sprintf("no OCI source is set (%s is empty; unset, it means %s)", envOCIRepo, DefaultOCIRepo)
	if ociRepo != "" {
		oci = fmt.Sprintf("the OCI source %s serves tags (6.6, 6.6.134, %s), not Debian flavours", ociRepo, strings.Join(MovingTags, ", "))
	}
	return fmt.Errorf("kernel %q: %w: the Debian source offers %s; %s; for another kernel give a path to a local "+
		"kernel (a bzImage or an arm64 Image, or a directory with vmlinuz, config and lib/modules/<release>)",
		name, ErrUnknownVersion, strings.Join(Available(), ", "), oci)
}
