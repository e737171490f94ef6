package vmtest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestChooseAccelForced(t *testing.T) {
	t.Setenv("VMTEST_QEMU", "/bin/true") // the forced paths never start it
	tests := []struct {
		want, env, got string
		err            bool
	}{
		{want: "kvm", got: AccelKVM},
		{want: "tcg", got: AccelTCG},
		{want: "", env: "tcg", got: AccelTCG},
		{want: "auto", env: "kvm", got: AccelKVM},
		{want: "tcg", env: "kvm", got: AccelTCG}, // an explicit choice beats the environment
		{want: "hvf", err: true},
		{want: "", env: "bogus", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.want+"/"+tt.env, func(t *testing.T) {
			t.Setenv("VMTEST_ACCEL", tt.env)
			c, err := ChooseAccel(context.Background(), "", "/nonexistent", tt.want, "")
			if tt.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.got, c.Name)
			assert.Equal(t, "forced", c.Reason)
		})
	}
}

func TestChooseAccelMissingQEMU(t *testing.T) {
	_, err := ChooseAccel(context.Background(), "/nonexistent/qemu-system-x86_64", "/k", "tcg", "")
	assert.ErrorContains(t, err, "apt-get install qemu-system-x86")
}
