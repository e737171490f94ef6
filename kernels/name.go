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

// flavourSuffix maps a flavour to the tail of Debian's package names.
var flavourSuffix = map[string]string{
	"cloud":   "cloud-amd64",
	"generic": "amd64",
	"rt":      "rt-amd64",
}

// Flavours lists the flavour suffixes a Debian version name may carry.
func Flavours() []string {
	fs := make([]string, 0, len(flavourSuffix))
	for f := range flavourSuffix {
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
}

// OCI tag suffixes of cilium/ci-kernels' images: -debug adds a vmlinux
// with DWARF, -selftests the BPF selftests' objects.
const (
	tagDebug     = "debug"
	tagSelftests = "selftests"
)

// MovingTags are the OCI tags that follow the kernel's releases.
var MovingTags = []string{"mainline", "stable", "longterm"}

// canonical is the cache's name for a Debian version: the default flavour is
// left out, so "6.1" and "6.1-cloud" share one cache entry.
func (s spec) canonical() string {
	if s.flavour == DefaultFlavour {
		return s.version
	}
	return s.version + "-" + s.flavour
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
//	./bzImage, /boot/...  a local kernel (the name contains a "/")
func parseName(name string) (spec, error) {
	if strings.ContainsRune(name, '/') {
		return spec{name: name, local: name}, nil
	}
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
			"maybe pinned (6.6@sha256:...), or a path to a kernel image (containing a \"/\", e.g. ./bzImage)",
			DefaultVersion, DefaultVersion, strings.Join(MovingTags, ", ")))
	}
	minor, patch, moving, suffix := m[1], m[2], m[3], m[4]
	_, isFlavour := flavourSuffix[suffix]
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
		"kernel (a bzImage, or a directory with vmlinuz, config and lib/modules/<release>)",
		name, ErrUnknownVersion, strings.Join(Available(), ", "), oci)
}
