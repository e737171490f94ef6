// Package artifacts writes files that the vmtest runner ships from the
// guest back to the host's results directory.
//
// Inside a guest the runner sets VMTEST_ARTIFACTS to a directory; whatever
// is written there ends up in the results. Elsewhere (a developer running
// the suites on the host) files go to $SKBSTORE_ARTIFACTS, else to
// skbstore-artifacts under os.TempDir, so they are still inspectable.
package artifacts

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

var logOnce sync.Once

// Dir returns the artifacts directory, creating it if needed.
func Dir() (string, error) {
	dir := os.Getenv("VMTEST_ARTIFACTS")
	if dir == "" {
		dir = os.Getenv("SKBSTORE_ARTIFACTS")
	}
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "skbstore-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create artifacts dir: %w", err)
	}
	return dir, nil
}

// Write stores data at rel, a slash-separated path inside Dir.
func Write(rel string, data []byte) (string, error) {
	dir, err := Dir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", fmt.Errorf("write artifact %s: %w", rel, err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return "", fmt.Errorf("write artifact %s: %w", rel, err)
	}
	return p, nil
}

// WriteJSON stores v, indented, at rel inside Dir.
func WriteJSON(rel string, v any) (string, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode artifact %s: %w", rel, err)
	}
	return Write(rel, append(b, '\n'))
}

// Save writes data at rel and reports a failure to write as a test error.
func Save(t testing.TB, rel string, data []byte) {
	t.Helper()
	p, err := Write(rel, data)
	if err != nil {
		t.Error(err)
		return
	}
	logOnce.Do(func() { t.Logf("artifacts in %s", filepath.Dir(p)) })
}

// SaveJSON writes v as JSON at rel and reports a failure as a test error.
func SaveJSON(t testing.TB, rel string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Errorf("encode artifact %s: %v", rel, err)
		return
	}
	Save(t, rel, append(b, '\n'))
}
