package kernels

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMatrixAgreesWithSources: each matrix kernel parses, for its
// architecture, and goes to the source the matrix says: Debian's series are
// exactly the Debian entries of the default architecture.
func TestMatrixAgreesWithSources(t *testing.T) {
	var local, debianDefault []string
	for _, k := range Matrix() {
		s, err := parseName(k.FullName())
		require.NoError(t, err, k.FullName())
		arch := k.Arch
		if arch == "" {
			arch = DefaultArch
		}
		assert.Equal(t, arch, s.arch, k.FullName())
		assert.NotContains(t, k.Name, "/", "Name has no architecture: it is in Arch")
		_, debian := findSeries(s.version)
		debian = debian && s.debian()
		assert.Equal(t, k.Source == SourceDebian, debian, "%s: source %s", k.Name, k.Source)
		assert.Equal(t, k.Source == SourceOCI, s.oci() && !debian, "%s: source %s", k.Name, k.Source)
		if k.Local && arch == DefaultArch {
			local = append(local, k.Name)
		}
		if k.Source == SourceDebian && arch == DefaultArch {
			debianDefault = append(debianDefault, k.Name)
		}
	}
	assert.Equal(t, Available(), debianDefault)
	assert.Contains(t, local, DefaultVersion)
	assert.Len(t, MatrixNames(""), len(Matrix()))
}

func TestMatrixFullName(t *testing.T) {
	for _, tc := range []struct {
		k    MatrixKernel
		want string
	}{
		{MatrixKernel{Name: "6.1"}, "6.1"},
		{MatrixKernel{Name: "6.1", Arch: "amd64"}, "6.1"},
		{MatrixKernel{Name: "6.12", Arch: "arm64"}, "6.12/arm64"},
		{MatrixKernel{Name: "stable", Arch: "arm64"}, "stable/arm64"},
	} {
		assert.Equal(t, tc.want, tc.k.FullName())
		base, arch := SplitArch(tc.k.FullName())
		assert.Equal(t, tc.k.Name, base)
		if tc.k.Arch != DefaultArch {
			assert.Equal(t, tc.k.Arch, arch)
		}
	}
}
