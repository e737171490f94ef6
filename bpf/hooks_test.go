package bpf

import "testing"

func TestAtLeast(t *testing.T) {
	tests := []struct {
		release, since string
		want           bool
	}{
		{"6.1.0-56-cloud-amd64", "6.1", true},
		{"6.12.118+deb13-cloud-amd64", "6.1", true},
		{"6.12.118+deb13-cloud-amd64", "6.12", true},
		{"6.1.0-56-cloud-amd64", "6.12", false},
		{"5.10.0-46-cloud-amd64", "6.1", false},
		{"7.2.13+deb14-cloud-amd64", "6.12", true},
		{"7.3.0-rc7-amd64", "6.12", true},
		{"10.0", "9.9", true},
		{"garbage", "6.1", false},
		{"6", "6.1", false},
		{"", "5.10", false},
	}
	for _, tt := range tests {
		if got := atLeast(tt.release, tt.since); got != tt.want {
			t.Errorf("atLeast(%q, %q) = %v, want %v", tt.release, tt.since, got, tt.want)
		}
	}
}

// TestOptionalHooksHaveAFirstKernel: every hook that may be missing says from
// which kernel on it may not, so that none is skipped silently.
func TestOptionalHooksHaveAFirstKernel(t *testing.T) {
	for _, h := range hooks {
		if !h.required && h.since == "" {
			t.Errorf("hook %s is optional and has no first kernel", h.prog)
		}
	}
}
