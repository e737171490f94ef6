package kernels

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMatrixAgreesWithSources: each matrix kernel parses, and goes to the
// source the matrix says: Debian's series are exactly the Debian entries.
func TestMatrixAgreesWithSources(t *testing.T) {
	assert.Equal(t, Available(), MatrixNames(SourceDebian))
	var local []string
	for _, k := range Matrix() {
		s, err := parseName(k.Name)
		require.NoError(t, err, k.Name)
		_, debian := findSeries(s.version)
		debian = debian && s.debian()
		assert.Equal(t, k.Source == SourceDebian, debian, "%s: source %s", k.Name, k.Source)
		assert.Equal(t, k.Source == SourceOCI, s.oci() && !debian, "%s: source %s", k.Name, k.Source)
		if k.Local {
			local = append(local, k.Name)
		}
	}
	assert.Contains(t, local, DefaultVersion)
	assert.Len(t, MatrixNames(""), len(Matrix()))
}
