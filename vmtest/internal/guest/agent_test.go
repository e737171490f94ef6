//go:build linux

package guest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/vmtest/internal/proto"
)

func TestKmsgLine(t *testing.T) {
	tests := []struct{ rec, want string }{
		{"6,339,5140900,-;NET: Registered PF_PACKET protocol family\n", "[    5.140900] NET: Registered PF_PACKET protocol family\n"},
		{"4,500,123456789,-;WARNING: CPU: 0 PID: 1 at x.c:1 f\n SUBSYSTEM=cpu\n", "[  123.456789] WARNING: CPU: 0 PID: 1 at x.c:1 f\n"},
		{"6,1,0,-;at zero\n", "[    0.000000] at zero\n"},
		{"6,2,123456789012,-;long uptime\n", "[123456.789012] long uptime\n"},
		{"6,3,x,-;bad timestamp\n", "bad timestamp\n"},
		{"no header at all\n", "no header at all\n"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, string(appendKmsgLine(nil, []byte(tt.rec))))
	}
	assert.Equal(t, "a\n[    0.000001] b\n", string(appendKmsgLine([]byte("a\n"), []byte("6,4,1,-;b\n"))))
}

func TestFrameWriterSplitsLargeOutput(t *testing.T) {
	var b bytes.Buffer
	key := bytes.Repeat([]byte{1}, proto.KeySize)
	fw := &frameWriter{w: proto.NewWriter(&b, key), name: "t"}
	data := bytes.Repeat([]byte("0123456789abcdef"), 5000) // 80000 bytes: three frames
	n, err := fw.Write(data)
	require.NoError(t, err)
	assert.Equal(t, len(data), n)

	var got []byte
	frames := readFrames(t, &b, key)
	for _, f := range frames {
		assert.Equal(t, proto.TypeOutput, f.Type)
		assert.Equal(t, "t", f.Name)
		got = append(got, f.Payload...)
	}
	assert.Len(t, frames, 3)
	assert.Equal(t, data, got)
}

func TestFrameWriterKeepsToTheCap(t *testing.T) {
	var b bytes.Buffer
	key := bytes.Repeat([]byte{1}, proto.KeySize)
	a := &agent{w: proto.NewWriter(&b, key), limits: proto.Limits{Output: 100}}
	fw := &frameWriter{w: a.w, name: "t", spend: a.spendOutput}
	for range 3 {
		n, err := fw.Write(bytes.Repeat([]byte("x"), 60))
		require.NoError(t, err)
		assert.Equal(t, 60, n, "a test writing past the cap must not see errors")
	}
	var out, faults []string
	for _, f := range readFrames(t, &b, key) {
		switch f.Type {
		case proto.TypeOutput:
			out = append(out, string(f.Payload))
		case proto.TypeFault:
			faults = append(faults, string(f.Payload))
		}
	}
	assert.Len(t, out, 1, "only what fits in the cap is sent")
	require.Len(t, faults, 1, "the cap is reported once")
	assert.Contains(t, faults[0], "-max-output")
}

// TestSendFilesKeepsToTheFileCap: past the cap on files, nothing more is
// sent and the cap is reported once, whether artifacts or outputs reach it.
func TestSendFilesKeepsToTheFileCap(t *testing.T) {
	var b bytes.Buffer
	key := bytes.Repeat([]byte{1}, proto.KeySize)
	a := &agent{w: proto.NewWriter(&b, key), limits: proto.Limits{ArtifactFiles: 2}}
	dir := t.TempDir()
	for _, n := range []string{"a", "b", "c", "d"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644))
	}
	a.sendOutputs([]proto.Output{{Path: dir, Dir: true}, {Path: filepath.Join(dir, "a")}}, time.Time{})
	files, faults := 0, 0
	for _, f := range readFrames(t, &b, key) {
		switch f.Type {
		case proto.TypeOutFile:
			files++
		case proto.TypeFault:
			faults++
			assert.Contains(t, string(f.Payload), "-max-artifact-files")
		}
	}
	assert.Equal(t, 2, files)
	assert.Equal(t, 1, faults)
}

// TestSendOutputsOnlyNew: of an output directory (a fuzz corpus), only the
// files the command wrote go back, not those that were there before.
func TestSendOutputsOnlyNew(t *testing.T) {
	var b bytes.Buffer
	key := bytes.Repeat([]byte{1}, proto.KeySize)
	a := &agent{w: proto.NewWriter(&b, key), limits: proto.Limits{ArtifactFiles: 10, ArtifactBytes: 1 << 20}}
	dir := t.TempDir()
	old := filepath.Join(dir, "seed")
	require.NoError(t, os.WriteFile(old, []byte("seed"), 0o644))
	past := time.Now().Add(-time.Hour)
	require.NoError(t, os.Chtimes(old, past, past))
	since := time.Now().Add(-time.Minute)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "new"), []byte("new"), 0o644))
	a.sendOutputs([]proto.Output{{Path: dir, Dir: true}}, since)
	var names []string
	for _, f := range readFrames(t, &b, key) {
		if f.Type == proto.TypeOutFile {
			names = append(names, f.Name)
		}
	}
	assert.Equal(t, []string{"0/new"}, names)
}

// readFrames reads every frame the agent wrote to b, checking each.
func readFrames(t *testing.T, b *bytes.Buffer, key []byte) []proto.Frame {
	t.Helper()
	r := proto.NewReader(b, key)
	var frames []proto.Frame
	for {
		f, err := r.Next()
		if errors.Is(err, io.EOF) {
			return frames
		}
		require.NoError(t, err)
		frames = append(frames, f)
	}
}

func TestStaticNodes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod needs root")
	}
	dir := t.TempDir()
	devname := filepath.Join(dir, "modules.devname")
	require.NoError(t, os.WriteFile(devname, []byte("# Device nodes to trigger on-demand module loading.\ntun net/tun c10:200\nloop loop-control c10:237\nevil ../../escape c10:1\nbad what x1:2\n"), 0o644))
	dev := filepath.Join(dir, "dev")
	require.NoError(t, staticNodes(devname, dev))
	for _, tc := range []struct {
		path         string
		major, minor uint32
	}{{"net/tun", 10, 200}, {"loop-control", 10, 237}, {"escape", 10, 1}} {
		var st unix.Stat_t
		require.NoError(t, unix.Stat(filepath.Join(dev, tc.path), &st), tc.path)
		assert.Equal(t, uint32(unix.S_IFCHR), st.Mode&unix.S_IFMT, tc.path)
		assert.Equal(t, tc.major, unix.Major(st.Rdev), tc.path)
		assert.Equal(t, tc.minor, unix.Minor(st.Rdev), tc.path)
	}
	_, err := os.Stat(filepath.Join(dir, "escape"))
	assert.True(t, os.IsNotExist(err), "a name cannot climb out of dev")
	require.NoError(t, staticNodes(devname, dev), "existing nodes are left alone")
	require.NoError(t, staticNodes(filepath.Join(dir, "none"), dev), "no modules.devname, nothing to do")
}

func TestParseDevnum(t *testing.T) {
	for _, tc := range []struct {
		in           string
		kind         byte
		major, minor uint32
		ok           bool
	}{
		{"c10:200", 'c', 10, 200, true},
		{"b7:0", 'b', 7, 0, true},
		{"x1:2", 0, 0, 0, false},
		{"c10", 0, 0, 0, false},
		{"c10:", 0, 0, 0, false},
		{"c:1", 0, 0, 0, false},
		{"c-1:2", 0, 0, 0, false},
		{"c1:2:3", 0, 0, 0, false},
		{"c4294967296:1", 0, 0, 0, false},
	} {
		kind, major, minor, ok := parseDevnum(tc.in)
		assert.Equal(t, tc.ok, ok, tc.in)
		assert.Equal(t, tc.kind, kind, tc.in)
		assert.Equal(t, tc.major, major, tc.in)
		assert.Equal(t, tc.minor, minor, tc.in)
	}
}

func TestOverlappingDisks(t *testing.T) {
	share := proto.Disk{Label: "vmtshare", Dir: "/.vmtest/share", Binds: []string{"/home/u/mod"}}
	mods := proto.Disk{Label: "vmtmods", Dir: "/lib/modules/6.1.0"}
	goroot := proto.Disk{Label: "vmtgoroot", Dir: "/usr/local/go"}
	for _, tc := range []struct {
		name  string
		disks []proto.Disk
		want  bool
	}{
		{"apart", []proto.Disk{share, mods, goroot}, false},
		{"one disk", []proto.Disk{share}, false},
		{"bind below a mount", []proto.Disk{{Label: "s", Dir: "/.vmtest/share", Binds: []string{"/usr/local/go/src"}}, goroot}, true},
		{"mount below a bind", []proto.Disk{{Label: "s", Dir: "/.vmtest/share", Binds: []string{"/usr"}}, goroot}, true},
		{"same mount point", []proto.Disk{mods, {Label: "m2", Dir: "/lib/modules/6.1.0/"}}, true},
		{"a prefix that is no parent", []proto.Disk{goroot, {Label: "g2", Dir: "/usr/local/golang"}}, false},
		{"the root", []proto.Disk{goroot, {Label: "r", Dir: "/x", Binds: []string{"/"}}}, true},
	} {
		assert.Equal(t, tc.want, overlapping(tc.disks), tc.name)
	}
}
