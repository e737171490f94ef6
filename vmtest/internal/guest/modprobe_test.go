//go:build linux

package guest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestModprobeResolves checks what the guest's modprobe would load, in what
// order, for the names the kernel asks for (dry run: nothing is loaded).
func TestModprobeResolves(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"modules.dep": "kernel/net/geneve.ko.xz: kernel/net/udp_tunnel.ko.xz kernel/net/ip6_udp_tunnel.ko.xz\n" +
			"kernel/net/udp_tunnel.ko.xz:\n" +
			"kernel/net/ip6_udp_tunnel.ko.xz:\n" +
			"kernel/net/sched/cls_flower.ko: kernel/net/sched/sch_ingress.ko\n" +
			"kernel/net/sched/sch_ingress.ko:\n" +
			"kernel/drivers/a-b.ko:\n" +
			"kernel/crypto/crc32c_generic.ko:\n" +
			"kernel/fs/ext9.ko:\n",
		"modules.alias": "# Aliases extracted from modules themselves.\n" +
			"alias rtnl-link-geneve geneve\n" +
			"alias net-sch-clsact sch_ingress\n" +
			"alias pci:v00008086d*sv*sd*bc*sc*i* a_b\n" +
			"alias fs-ext4 ext4\n",
		"modules.builtin": "kernel/fs/ext4/ext4.ko\n",
		"modules.softdep": "softdep ext9 pre: crc32c_generic\n",
	} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	tests := []struct {
		name   string
		params string
		want   []string // insmod lines
		err    string
	}{
		{name: "geneve", want: []string{"kernel/net/ip6_udp_tunnel.ko.xz ", "kernel/net/udp_tunnel.ko.xz ", "kernel/net/geneve.ko.xz "}},
		{name: "rtnl-link-geneve", want: []string{"kernel/net/ip6_udp_tunnel.ko.xz ", "kernel/net/udp_tunnel.ko.xz ", "kernel/net/geneve.ko.xz "}},
		{name: "cls_flower", params: "x=1", want: []string{"kernel/net/sched/sch_ingress.ko ", "kernel/net/sched/cls_flower.ko x=1"}},
		{name: "net-sch-clsact", want: []string{"kernel/net/sched/sch_ingress.ko "}},
		{name: "a_b", want: []string{"kernel/drivers/a-b.ko "}},
		{name: "pci:v00008086d000010D3sv00008086sd00000001bc02sc00i00", want: []string{"kernel/drivers/a-b.ko "}},
		{name: "ext9", want: []string{"kernel/crypto/crc32c_generic.ko ", "kernel/fs/ext9.ko "}},
		{name: "ext4"},    // built in
		{name: "fs-ext4"}, // an alias of a built-in module
		{name: "nosuch", err: "module nosuch not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			m := &modprober{dir: dir, dryRun: true, out: &out}
			err := m.probe(tt.name, tt.params)
			if tt.err != "" {
				assert.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			var want []string
			for _, w := range tt.want {
				want = append(want, strings.TrimSpace("insmod "+filepath.Join(dir, w)))
			}
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				got = append(got, strings.TrimSpace(l))
			}
			if len(want) == 0 {
				assert.Empty(t, strings.TrimSpace(out.String()))
				return
			}
			assert.Equal(t, want, got)
		})
	}
}

func TestModprobeCommandLine(t *testing.T) {
	var stderr strings.Builder
	assert.Equal(t, 1, Modprobe([]string{"-x", "geneve"}, &stderr))
	assert.Contains(t, stderr.String(), "unknown option")
	stderr.Reset()
	assert.Equal(t, 1, Modprobe([]string{"-q", "--"}, &stderr))
	assert.Contains(t, stderr.String(), "no module given")
}
