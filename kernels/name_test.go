package kernels

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		in        string
		want      spec
		canonical string
		err       error
	}{
		{in: "6.1", want: spec{name: "6.1", version: "6.1", flavour: "cloud", tag: "6.1"}, canonical: "6.1"},
		{in: "6.1-cloud", want: spec{name: "6.1-cloud", version: "6.1", flavour: "cloud"}, canonical: "6.1"},
		{in: "6.12-generic", want: spec{name: "6.12-generic", version: "6.12", flavour: "generic"}, canonical: "6.12-generic"},
		{in: "7.3-rt", want: spec{name: "7.3-rt", version: "7.3", flavour: "rt"}, canonical: "7.3-rt"},
		{in: "6.8", want: spec{name: "6.8", version: "6.8", flavour: "cloud", tag: "6.8"}, canonical: "6.8"}, // syntax only
		{in: "6.6.134", want: spec{name: "6.6.134", tag: "6.6.134"}},
		{in: "stable", want: spec{name: "stable", tag: "stable"}},
		{in: "mainline", want: spec{name: "mainline", tag: "mainline"}},
		{in: "longterm-debug", want: spec{name: "longterm-debug", tag: "longterm-debug"}},
		{in: "6.6-debug", want: spec{name: "6.6-debug", tag: "6.6-debug"}},
		{in: "6.6-selftests", want: spec{name: "6.6-selftests", tag: "6.6-selftests"}},
		{in: "oci:6.1", want: spec{name: "oci:6.1", source: "oci", tag: "6.1"}},
		{in: "debian:6.1", want: spec{name: "debian:6.1", source: "debian", version: "6.1", flavour: "cloud", tag: "6.1"}},
		{in: "6.6@sha256:" + hex64, want: spec{name: "6.6@sha256:" + hex64, source: "oci", tag: "6.6", digest: "sha256:" + hex64}},
		{in: "./bzImage", want: spec{name: "./bzImage", local: "./bzImage"}},
		{in: "/boot/vmlinuz-6.1.0-47-amd64", want: spec{name: "/boot/vmlinuz-6.1.0-47-amd64", local: "/boot/vmlinuz-6.1.0-47-amd64"}},
		{in: "6.12/arm64", want: spec{name: "6.12/arm64", version: "6.12", flavour: "cloud", tag: "6.12", arch: "arm64"}, canonical: "6.12/arm64"},
		{in: "6.1/amd64", want: spec{name: "6.1/amd64", version: "6.1", flavour: "cloud", tag: "6.1"}, canonical: "6.1"},
		{in: "6.1-cloud/arm64", want: spec{name: "6.1-cloud/arm64", version: "6.1", flavour: "cloud", arch: "arm64"}, canonical: "6.1/arm64"},
		{in: "6.1-generic/arm64", want: spec{name: "6.1-generic/arm64", version: "6.1", flavour: "generic", arch: "arm64"}, canonical: "6.1-generic/arm64"},
		{in: "debian:6.1/arm64", want: spec{name: "debian:6.1/arm64", source: "debian", version: "6.1", flavour: "cloud", tag: "6.1", arch: "arm64"}, canonical: "6.1/arm64"},
		{in: "oci:6.6/arm64", want: spec{name: "oci:6.6/arm64", source: "oci", tag: "6.6", arch: "arm64"}},
		{in: "stable/arm64", want: spec{name: "stable/arm64", tag: "stable", arch: "arm64"}},
		{in: "6.6-debug/arm64", want: spec{name: "6.6-debug/arm64", tag: "6.6-debug", arch: "arm64"}},
		{in: "6.6@sha256:" + hex64 + "/arm64", want: spec{name: "6.6@sha256:" + hex64 + "/arm64", source: "oci", tag: "6.6", digest: "sha256:" + hex64, arch: "arm64"}},
		// Paths: what precedes the architecture is no name, or is a path.
		{in: "./6.1/arm64", want: spec{name: "./6.1/arm64", local: "./6.1/arm64"}},
		{in: "build/arm64", want: spec{name: "build/arm64", local: "build/arm64"}},
		{in: "6.1-nosuch/arm64", want: spec{name: "6.1-nosuch/arm64", local: "6.1-nosuch/arm64"}},
		{in: "/arm64", want: spec{name: "/arm64", local: "/arm64"}},
		{in: "6.1/arm64/arm64", want: spec{name: "6.1/arm64/arm64", local: "6.1/arm64/arm64"}},
		{in: "6.1/riscv64", want: spec{name: "6.1/riscv64", local: "6.1/riscv64"}},
		{in: "foo", err: ErrBadName},
		{in: "arm64", err: ErrBadName},
		{in: "6.", err: ErrBadName},
		{in: "6", err: ErrBadName},
		{in: "6.1-", err: ErrBadName},
		{in: "v6.1", err: ErrBadName},
		{in: " 6.1", err: ErrBadName},
		{in: "", err: ErrBadName},
		{in: "6.1-Cloud", err: ErrBadName},
		{in: "6.1-nosuch", err: ErrBadName},
		{in: "6.6.1-generic", err: ErrBadName},
		{in: "stable-rt", err: ErrBadName},
		{in: "oci:6.1-generic", err: ErrBadName},
		{in: "debian:stable", err: ErrBadName},
		{in: "debian:6.1-debug", err: ErrBadName},
		{in: "debian:6.1@sha256:" + hex64, err: ErrBadName},
		{in: "6.6@sha256:abc", err: ErrBadName},
		{in: "6.6@latest", err: ErrBadName},
		{in: "docker:6.6", err: ErrBadName},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseName(tc.in)
			if tc.err != nil {
				require.Error(t, err)
				assert.True(t, errors.Is(err, tc.err), "%v", err)
				assert.Contains(t, err.Error(), "kernel \""+tc.in+"\"")
				return
			}
			require.NoError(t, err)
			if tc.want.arch == "" && tc.want.local == "" {
				tc.want.arch = DefaultArch
			}
			assert.Equal(t, tc.want, got)
			if tc.canonical != "" {
				assert.Equal(t, tc.canonical, got.canonical())
			}
		})
	}
}

func TestSplitArch(t *testing.T) {
	for _, tc := range []struct{ in, base, arch string }{
		{"6.12/arm64", "6.12", "arm64"},
		{"6.1-generic/arm64", "6.1-generic", "arm64"},
		{"oci:6.6/arm64", "oci:6.6", "arm64"},
		{"stable/arm64", "stable", "arm64"},
		{"6.1/amd64", "6.1", "amd64"},
		{"6.1", "6.1", ""},
		{"./6.1/arm64", "./6.1/arm64", ""},
		{"build/arm64", "build/arm64", ""},
		{"/boot/vmlinuz", "/boot/vmlinuz", ""},
		{"6.1/riscv64", "6.1/riscv64", ""},
		{"", "", ""},
	} {
		t.Run(tc.in, func(t *testing.T) {
			base, arch := SplitArch(tc.in)
			assert.Equal(t, tc.base, base)
			assert.Equal(t, tc.arch, arch)
		})
	}
	assert.Equal(t, []string{"amd64", "arm64"}, Arches())
	assert.Equal(t, DefaultArch, Arches()[0])
}

// TestCanonicalFileNames: canonical names of all architectures, flavours
// and sources map to distinct file names, amd64's as before arm64 existed.
func TestCanonicalFileNames(t *testing.T) {
	c := &Cache{Dir: "/c"}
	seen := map[string]string{}
	for _, name := range []string{"6.1", "6.1-generic", "6.1/arm64", "6.1-generic/arm64", "6.12", "6.12/arm64"} {
		s, err := parseName(name)
		require.NoError(t, err)
		p := c.resolutionPath(s.canonical())
		assert.NotContains(t, seen, p, "%s and %s share %s", name, seen[p], p)
		seen[p] = name
		assert.Equal(t, "/c/kernels/resolved", filepath.Dir(p))
	}
	assert.Equal(t, "/c/kernels/resolved/6.1.json", c.resolutionPath("6.1"))
	assert.Equal(t, "/c/kernels/resolved/6.1_arm64.json", c.resolutionPath("6.1/arm64"))
	assert.Equal(t, "/c/kernels/locks/oci-stable_arm64.lock", c.lockPath("oci-stable/arm64"))
}

func TestAvailable(t *testing.T) {
	assert.Equal(t, []string{"5.10", "6.1", "6.12", "7.2", "7.3"}, Available())
	assert.Contains(t, Available(), DefaultVersion)
	assert.Equal(t, []string{"cloud", "generic", "rt"}, Flavours())
}

func TestUnknownVersionError(t *testing.T) {
	err := unknownVersionError("6.8", "")
	assert.ErrorIs(t, err, ErrUnknownVersion)
	assert.Contains(t, err.Error(), `kernel "6.8"`)
	assert.Contains(t, err.Error(), "5.10, 6.1, 6.12, 7.2, 7.3")
	assert.Contains(t, err.Error(), "path to a local kernel")
	assert.Contains(t, err.Error(), "VMTEST_OCI_REPO")
	err = unknownVersionError("6.8-generic", "ghcr.io/cilium/ci-kernels")
	assert.Contains(t, err.Error(), "the OCI source ghcr.io/cilium/ci-kernels serves tags")
}
