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
	version string // "6.1"
	flavour string // "cloud"
}

// canonical is the cache's name for a Debian version: the default flavour is
// left out, so "6.1" and "6.1-cloud" share one cache entry.
func (s spec) canonical() string {
	if s.flavour == DefaultFlavour {
		return s.version
	}
	return s.version + "-" + s.flavour
}

var versionRE = regexp.MustCompile(`^([0-9]+\.[0-9]+)(?:-([a-z]+))?$`)

// parseName splits a name into a local path or a version and flavour. It
// checks syntax only: whether a source has the version is decided later.
func parseName(name string) (spec, error) {
	if strings.ContainsRune(name, '/') {
		return spec{name: name, local: name}, nil
	}
	m := versionRE.FindStringSubmatch(name)
	if m == nil {
		return spec{}, fmt.Errorf("kernel %q: %w: want a version MAJOR.MINOR[-FLAVOUR] (e.g. %s or %s-generic) "+
			"or a path to a kernel image (containing a \"/\", e.g. ./bzImage)", name, ErrBadName, DefaultVersion, DefaultVersion)
	}
	s := spec{name: name, version: m[1], flavour: m[2]}
	if s.flavour == "" {
		s.flavour = DefaultFlavour
	}
	if _, ok := flavourSuffix[s.flavour]; !ok {
		return spec{}, fmt.Errorf("kernel %q: %w: unknown flavour %q (have %s)", name, ErrBadName, s.flavour, strings.Join(Flavours(), ", "))
	}
	return s, nil
}

// unknownVersionError explains which versions exist and how to get another.
func unknownVersionError(name string) error {
	return fmt.Errorf("kernel %q: %w: the Debian source offers %s; for another kernel give a path to a local "+
		"kernel (a bzImage, or a directory with vmlinuz, config and lib/modules/<release>), or set %s "+
		"(or Cache.OCIRepo) to an OCI repository of kernel images",
		name, ErrUnknownVersion, strings.Join(Available(), ", "), envOCIRepo)
}
