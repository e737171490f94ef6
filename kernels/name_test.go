package kernels

import (
	"errors"
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
		{in: "foo", err: ErrBadName},
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
			assert.Equal(t, tc.want, got)
			if tc.canonical != "" {
				assert.Equal(t, tc.canonical, got.canonical())
			}
		})
	}
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
