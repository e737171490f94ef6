package testenv

import "testing"

// TestRequireGuestSkipsOnHost checks the guard that keeps the suites from
// attaching BPF programs to a developer's or CI's kernel: only the exact
// opt-in values let a test through.
func TestRequireGuestSkipsOnHost(t *testing.T) {
	for _, tc := range []struct{ name, guest, allow string }{
		{"host", "", ""},
		{"guest flag other value", "0", ""},
		{"allow flag other value", "", "yes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("VMTEST_GUEST", tc.guest)
			t.Setenv("SKBSTORE_ALLOW_HOST", tc.allow)
			passed := false
			t.Run("inner", func(t *testing.T) {
				RequireGuest(t)
				passed = true
			})
			if passed {
				t.Fatal("RequireGuest let the test run outside a guest")
			}
		})
	}
}
