package vmtest

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/skbstore/skbstore/vmtest/internal/proto"
)

var testKey = bytes.Repeat([]byte{3}, proto.KeySize)

// frames encodes frames the way the agent does, with the boot's key: what
// these tests feed the host could only come from the agent itself (or from
// a guest that stole the key), so the host's checks of the job must hold on
// their own.
func frames(t testing.TB, fs ...proto.Frame) []byte {
	t.Helper()
	var b bytes.Buffer
	w := proto.NewWriter(&b, testKey)
	for _, f := range fs {
		require.NoError(t, w.WriteFrame(f.Type, f.Name, f.Payload))
	}
	return b.Bytes()
}

func exitFrame(id string, code int) proto.Frame {
	b, _ := (&proto.Exit{Code: code}).MarshalBinary()
	return proto.Frame{Type: proto.TypeExit, Name: id, Payload: b}
}

func hello() proto.Frame {
	b, _ := (&proto.Hello{Release: "6.1.0"}).MarshalBinary()
	return proto.Frame{Type: proto.TypeHello, Payload: b}
}

// readResults runs the host's result handler on data for a job of the given
// command IDs, in a results directory inside a sandbox directory, and returns
// the result and the sandbox.
func readResults(t testing.TB, limits Limits, data []byte, ids ...string) (*Result, string) {
	t.Helper()
	sandbox := t.TempDir()
	out := filepath.Join(sandbox, "a", "b", "c", "out")
	require.NoError(t, os.MkdirAll(out, 0o755))
	res := &Result{OutDir: out}
	for _, id := range ids {
		res.Commands = append(res.Commands, CommandResult{ID: id})
	}
	rr := newResultReader(res, Options{Limits: limits}, testKey, &splatScanner{}, time.Now())
	rr.read(bytes.NewReader(data))
	rr.finish()
	return res, sandbox
}

// filesOutside lists the files under sandbox that are not under out.
func filesOutside(t testing.TB, sandbox, out string) []string {
	t.Helper()
	var outside []string
	_ = filepath.WalkDir(sandbox, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(p, out+string(filepath.Separator)) {
			outside = append(outside, p)
		}
		return nil
	})
	return outside
}

func TestResultReaderAcceptsAGoodRun(t *testing.T) {
	data := frames(t, hello(),
		proto.Frame{Type: proto.TypeStart, Name: "a"},
		proto.Frame{Type: proto.TypeOutput, Name: "a", Payload: []byte("--- PASS: TestX\nPASS\n")},
		proto.Frame{Type: proto.TypeFile, Name: proto.EscapeName("a/dir/x y.json"), Payload: []byte("{")},
		proto.Frame{Type: proto.TypeDmesg, Payload: []byte("[ 0.9] streamed meanwhile\n")},
		proto.Frame{Type: proto.TypeFileMore, Name: proto.EscapeName("a/dir/x y.json"), Payload: []byte("}")},
		exitFrame("a", 0),
		proto.Frame{Type: proto.TypeDmesg, Payload: []byte("[ 1.0] hello\n[ 1.1] WARNING: CPU: 0 PID: 1 at x.c:1 f\n")},
		proto.Frame{Type: proto.TypeDone})
	res, _ := readResults(t, Limits{}, data, "a")
	assert.Empty(t, res.ProtocolErrors)
	assert.Empty(t, res.Faults)
	require.NotNil(t, res.Commands[0].Exit)
	assert.Empty(t, res.Commands[0].FailLine)
	b, err := os.ReadFile(filepath.Join(res.OutDir, "artifacts", "a", "dir", "x y.json"))
	require.NoError(t, err)
	assert.Equal(t, "{}", string(b))
	out, err := res.ReadOutput("a")
	require.NoError(t, err)
	assert.Equal(t, "--- PASS: TestX\nPASS\n", string(out))
	assert.NoError(t, res.Err())
}

// TestResultReaderRefusesWhatTheJobDidNotAskFor feeds authentic frames that do
// not fit the job: each is a protocol error that fails the run, and none
// writes outside the results directory.
func TestResultReaderRefusesWhatTheJobDidNotAskFor(t *testing.T) {
	start := proto.Frame{Type: proto.TypeStart, Name: "a"}
	file := func(name string) proto.Frame {
		return proto.Frame{Type: proto.TypeFile, Name: proto.EscapeName(name), Payload: []byte("x")}
	}
	tests := []struct {
		name   string
		frames []proto.Frame
		want   string
	}{
		{"output named out of the results", []proto.Frame{hello(), start, {Type: proto.TypeOutput, Name: "../../../../x", Payload: []byte("x")}}, "not running"},
		{"command not in the job", []proto.Frame{hello(), {Type: proto.TypeStart, Name: "zz"}}, "out of turn"},
		{"second exit turns a failure into a pass", []proto.Frame{hello(), start, exitFrame("a", 1), exitFrame("a", 0), {Type: proto.TypeDone}}, "not running"},
		{"done before the command finished", []proto.Frame{hello(), start, {Type: proto.TypeDone}}, "before every command had finished"},
		{"frame after done", []proto.Frame{hello(), start, exitFrame("a", 0), {Type: proto.TypeDone}, exitFrame("a", 0)}, "after the agent said it was done"},
		{"frame before hello", []proto.Frame{start}, "before the agent's hello"},
		{"artifact climbing out", []proto.Frame{hello(), start, file("a/../../../../../x")}, "not a clean relative path"},
		{"absolute artifact", []proto.Frame{hello(), start, file("/tmp/x")}, "not a clean relative path"},
		{"artifact of another command", []proto.Frame{hello(), start, file("b/x")}, "not below the directory"},
		{"artifact sent twice", []proto.Frame{hello(), start, file("a/x"), file("a/x")}, "file exists"},
		{"artifact piece without start", []proto.Frame{hello(), start, {Type: proto.TypeFileMore, Name: "a/x", Payload: []byte("x")}}, "without its start"},
		{"artifact too deep", []proto.Frame{hello(), start, file("a/" + strings.Repeat("d/", 40) + "x")}, "deeper"},
		{"unknown frame type", []proto.Frame{hello(), {Type: "exec", Name: "rm"}}, "unknown frame type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, sandbox := readResults(t, Limits{}, frames(t, tt.frames...), "a")
			require.NotEmpty(t, res.ProtocolErrors)
			assert.Contains(t, strings.Join(res.ProtocolErrors, "\n"), tt.want)
			assert.Error(t, res.Err())
			assert.Empty(t, filesOutside(t, sandbox, res.OutDir))
		})
	}
}

func TestResultReaderCaps(t *testing.T) {
	start := proto.Frame{Type: proto.TypeStart, Name: "a"}
	big := bytes.Repeat([]byte("x"), 1000)
	t.Run("output", func(t *testing.T) {
		fs := []proto.Frame{hello(), start}
		for range 10 {
			fs = append(fs, proto.Frame{Type: proto.TypeOutput, Name: "a", Payload: big})
		}
		res, _ := readResults(t, Limits{OutputBytes: 2500}, frames(t, append(fs, exitFrame("a", 0), proto.Frame{Type: proto.TypeDone})...), "a")
		require.Len(t, res.Faults, 1)
		assert.Contains(t, res.Faults[0], FlagMaxOutput)
		out, _ := res.ReadOutput("a")
		assert.LessOrEqual(t, len(out), 2500)
		assert.ErrorContains(t, res.Err(), FlagMaxOutput)
	})
	t.Run("artifact bytes", func(t *testing.T) {
		fs := []proto.Frame{hello(), start, {Type: proto.TypeFile, Name: "a/big", Payload: big}}
		for range 5 {
			fs = append(fs, proto.Frame{Type: proto.TypeFileMore, Name: "a/big", Payload: big})
		}
		res, _ := readResults(t, Limits{ArtifactBytes: 2500}, frames(t, append(fs, exitFrame("a", 0), proto.Frame{Type: proto.TypeDone})...), "a")
		assert.Empty(t, res.ProtocolErrors)
		require.Len(t, res.Faults, 1)
		assert.Contains(t, res.Faults[0], FlagMaxArtifacts)
		st, err := os.Stat(filepath.Join(res.OutDir, "artifacts", "a", "big"))
		require.NoError(t, err)
		assert.LessOrEqual(t, st.Size(), int64(2500))
	})
	t.Run("artifact files", func(t *testing.T) {
		fs := []proto.Frame{hello(), start}
		for i := range 50 {
			fs = append(fs, proto.Frame{Type: proto.TypeFile, Name: fmt.Sprintf("a/f%d", i), Payload: []byte("x")},
				proto.Frame{Type: proto.TypeFileMore, Name: fmt.Sprintf("a/f%d", i), Payload: []byte("y")})
		}
		res, _ := readResults(t, Limits{ArtifactFiles: 10}, frames(t, append(fs, exitFrame("a", 0), proto.Frame{Type: proto.TypeDone})...), "a")
		assert.Empty(t, res.ProtocolErrors)
		assert.Len(t, res.Files, 10)
		require.Len(t, res.Faults, 1)
		assert.Contains(t, res.Faults[0], FlagMaxArtifactFiles)
	})
	t.Run("protocol errors and messages are bounded", func(t *testing.T) {
		fs := []proto.Frame{hello()}
		for i := range 5000 {
			fs = append(fs, proto.Frame{Type: proto.TypeOutput, Name: fmt.Sprintf("n%d", i), Payload: []byte("x")},
				proto.Frame{Type: proto.TypeLog, Payload: big})
		}
		res, sandbox := readResults(t, Limits{}, frames(t, fs...), "a")
		assert.LessOrEqual(t, len(res.ProtocolErrors), maxProtoErrors+1)
		assert.LessOrEqual(t, len(res.Log), maxMessages)
		entries, _ := os.ReadDir(res.OutDir)
		assert.Empty(t, entries, "no file per name")
		assert.Empty(t, filesOutside(t, sandbox, res.OutDir))
	})
}

func TestResultReaderCrossChecksExitStatus(t *testing.T) {
	tests := []struct {
		name, output string
		fail         string
	}{
		{"plain", "=== RUN   TestX\n--- FAIL: TestX (0.00s)\nFAIL\n", "--- FAIL: TestX (0.00s)"},
		{"test2json", "\x16=== RUN   TestX\n\x16--- FAIL: TestX (0.00s)\n\x16FAIL\n", "--- FAIL: TestX (0.00s)"},
		{"final line without newline", "ok so far\nFAIL", "FAIL"},
		{"pass", "--- PASS: TestX\n    x_test.go:1: --- FAIL: is only text here\nPASS\n", ""},
		{"log line mentioning FAIL", "    --- FAIL: TestX/sub is indented\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := frames(t, hello(), proto.Frame{Type: proto.TypeStart, Name: "a"},
				proto.Frame{Type: proto.TypeOutput, Name: "a", Payload: []byte(tt.output[:len(tt.output)/2])},
				proto.Frame{Type: proto.TypeOutput, Name: "a", Payload: []byte(tt.output[len(tt.output)/2:])},
				exitFrame("a", 0), proto.Frame{Type: proto.TypeDone})
			res, _ := readResults(t, Limits{}, data, "a")
			assert.Equal(t, tt.fail, res.Commands[0].FailLine)
			if tt.fail != "" {
				assert.ErrorContains(t, res.Err(), "exit status 0, but its output reports a failure")
			} else {
				assert.NoError(t, res.Err())
			}
		})
	}
}

// FuzzResultReader feeds the host's result handler authentic frames built
// from fuzz input: whatever they say, nothing is written outside the results
// directory and the caps hold.
func FuzzResultReader(f *testing.F) {
	f.Add("file", "a/x", []byte("data"), "more", "a/x", []byte("more"))
	f.Add("out", "../../../../tmp/x", []byte("x"), "exit", "a", []byte("code\x000\x00"))
	f.Add("file", "a/%2E%2E/%2E%2E/x", []byte("x"), "file", "a//x", []byte{})
	f.Add("start", "a", []byte{}, "done", "", []byte{})
	f.Fuzz(func(t *testing.T, t1, n1 string, p1 []byte, t2, n2 string, p2 []byte) {
		var b bytes.Buffer
		w := proto.NewWriter(&b, testKey)
		for _, fr := range []proto.Frame{hello(), {Type: proto.TypeStart, Name: "a"}, {Type: t1, Name: n1, Payload: p1}, {Type: t2, Name: n2, Payload: p2}} {
			_ = w.WriteFrame(fr.Type, fr.Name, fr.Payload)
		}
		res, sandbox := readResults(t, Limits{OutputBytes: 100, ArtifactBytes: 100, ArtifactFiles: 1}, b.Bytes(), "a")
		if out := filesOutside(t, sandbox, res.OutDir); len(out) > 0 {
			t.Fatalf("files outside the results directory: %v", out)
		}
		if len(res.Files) > 1 {
			t.Fatalf("%d artifacts past the cap of 1", len(res.Files))
		}
	})
}

// TestResultReaderCutShort: a guest stopped in the middle of a frame is a
// failure of the boot (reported as such), not a protocol error.
func TestResultReaderCutShort(t *testing.T) {
	data := frames(t, hello(), proto.Frame{Type: proto.TypeStart, Name: "a"},
		proto.Frame{Type: proto.TypeOutput, Name: "a", Payload: bytes.Repeat([]byte("x"), 100)})
	res := &Result{OutDir: t.TempDir(), Commands: []CommandResult{{ID: "a"}}}
	rr := newResultReader(res, Options{}, testKey, &splatScanner{}, time.Now())
	rr.read(bytes.NewReader(data[:len(data)-10]))
	rr.finish()
	assert.Empty(t, res.ProtocolErrors)
	assert.Contains(t, rr.stage(), "while running a")
	assert.Contains(t, rr.stage(), "cut short")
}

// TestResultReaderOutputFiles: files a command wrote for the host (profiles,
// coverage) land where the job asked, and nowhere else.
func TestResultReaderOutputFiles(t *testing.T) {
	sandbox := t.TempDir()
	prof, covdir := filepath.Join(sandbox, "w", "cpu.out"), filepath.Join(sandbox, "w", "gocoverdir")
	require.NoError(t, os.MkdirAll(filepath.Dir(prof), 0o755))
	require.NoError(t, os.WriteFile(prof, []byte("old profile"), 0o644))
	opts := Options{Limits: Limits{}, Commands: []Command{{ID: "a", Outputs: []Output{{Host: prof}, {Host: covdir, Dir: true}}}}}
	run := func(fs ...proto.Frame) *Result {
		res := &Result{OutDir: filepath.Join(sandbox, "out"), Commands: []CommandResult{{ID: "a"}}}
		require.NoError(t, os.MkdirAll(res.OutDir, 0o755))
		rr := newResultReader(res, opts, testKey, &splatScanner{}, time.Now())
		all := append([]proto.Frame{hello(), {Type: proto.TypeStart, Name: "a"}}, fs...)
		rr.read(bytes.NewReader(frames(t, append(all, exitFrame("a", 0), proto.Frame{Type: proto.TypeDone})...)))
		rr.finish()
		return res
	}
	res := run(
		proto.Frame{Type: proto.TypeOutFile, Name: "0", Payload: []byte("new ")},
		proto.Frame{Type: proto.TypeFileMore, Name: "0", Payload: []byte("profile")},
		proto.Frame{Type: proto.TypeOutFile, Name: "1/" + proto.EscapeName("covmeta.1"), Payload: []byte("meta")},
		proto.Frame{Type: proto.TypeOutFile, Name: "1/" + proto.EscapeName("sub/covcounters.1"), Payload: []byte("counters")})
	assert.Empty(t, res.ProtocolErrors)
	for p, want := range map[string]string{prof: "new profile", filepath.Join(covdir, "covmeta.1"): "meta", filepath.Join(covdir, "sub", "covcounters.1"): "counters"} {
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		assert.Equal(t, want, string(b))
	}
	for _, name := range []string{"2", "0/x", "1", "1/" + proto.EscapeName("../../escape"), "x"} {
		res := run(proto.Frame{Type: proto.TypeOutFile, Name: name, Payload: []byte("x")})
		assert.NotEmpty(t, res.ProtocolErrors, name)
	}
	assert.NoFileExists(t, filepath.Join(sandbox, "escape"))
}
