package proto

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	testKey  = bytes.Repeat([]byte{7}, KeySize)
	otherKey = bytes.Repeat([]byte{8}, KeySize)
)

func encodeWith(t testing.TB, w *Writer, frames ...Frame) []byte {
	t.Helper()
	var b bytes.Buffer
	w.w = &b
	for _, f := range frames {
		require.NoError(t, w.WriteFrame(f.Type, f.Name, f.Payload))
	}
	return b.Bytes()
}

func encode(t testing.TB, frames ...Frame) []byte {
	return encodeWith(t, NewWriter(nil, testKey), frames...)
}

// readAll collects frames and the errors met on the way until EOF. The data
// arrives in small pieces, as from a serial port.
func readAll(data []byte) (frames []Frame, errs []error) {
	r := NewReader(iotest.HalfReader(bytes.NewReader(data)), testKey)
	for {
		f, err := r.Next()
		if errors.Is(err, io.EOF) {
			return frames, errs
		}
		if err != nil {
			errs = append(errs, err)
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return frames, errs
			}
		}
		if f.Type != "" {
			frames = append(frames, f)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	binary := make([]byte, 5000)
	rand.New(rand.NewSource(1)).Read(binary)
	in := []Frame{
		{Type: TypeHello, Payload: []byte("release\x006.1.0\x00")},
		{Type: TypeOutput, Name: "t1", Payload: []byte("=== RUN TestA\n" + Magic + "fake header inside payload\n")},
		{Type: TypeFile, Name: EscapeName("verifier/a b.log"), Payload: binary},
		{Type: TypeOutput, Name: "t1", Payload: nil},
		{Type: TypeOutput, Name: "t1", Payload: bytes.Repeat([]byte("x"), MaxPayload)},
		{Type: TypeDone},
	}
	got, errs := readAll(encode(t, in...))
	require.Empty(t, errs)
	require.Len(t, got, len(in))
	for i := range in {
		assert.Equal(t, in[i].Type, got[i].Type)
		assert.Equal(t, in[i].Name, got[i].Name)
		assert.Equal(t, uint64(i), got[i].Seq)
		assert.True(t, bytes.Equal(in[i].Payload, got[i].Payload), "payload %d", i)
	}
	name, err := UnescapeName(got[2].Name)
	require.NoError(t, err)
	assert.Equal(t, "verifier/a b.log", name)
}

func TestDamagedInput(t *testing.T) {
	a := Frame{Type: TypeOutput, Name: "x", Payload: []byte("first\n")}
	b := Frame{Type: TypeExit, Name: "x", Payload: []byte("code\x000\x00")}
	w := NewWriter(nil, testKey)
	fa := encodeWith(t, w, a)
	fb := encodeWith(t, w, b)
	good := append(append([]byte(nil), fa...), fb...)

	flipped := append([]byte(nil), good...)
	flipped[len(fa)-3] ^= 0xff // inside a's payload

	tests := []struct {
		name       string
		data       []byte
		wantTypes  []string
		wantErr    error
		wantErrNum int
	}{
		{"garbage before", append([]byte("[    1.0] printk noise\n\x00\xff"), good...), []string{TypeOutput, TypeExit}, ErrCorrupt, 1},
		{"garbage between", append(append(append([]byte(nil), fa...), "junk without newline "...), fb...), []string{TypeOutput, TypeExit}, ErrCorrupt, 1},
		{"garbage after", append(append([]byte(nil), good...), "tail"...), []string{TypeOutput, TypeExit}, ErrCorrupt, 1},
		{"only garbage", []byte("hello\nworld\n"), nil, ErrCorrupt, 1},
		{"bad payload drops only that frame, and the gap shows", flipped, []string{TypeExit}, ErrCorrupt, 1},
		{"truncated payload", good[:len(good)-4], []string{TypeOutput}, io.ErrUnexpectedEOF, 1},
		{"truncated header", good[:len(fa)+8], []string{TypeOutput}, ErrCorrupt, 1},
		{"bad length", []byte(Magic + "out x 0 notanumber " + strings.Repeat("0", 64) + "\n"), nil, ErrCorrupt, 1},
		{"too few fields", []byte(Magic + "out x\n"), nil, ErrCorrupt, 1},
		{"empty", nil, nil, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frames, errs := readAll(tt.data)
			assert.Equal(t, tt.wantTypes, typesOf(frames))
			require.Len(t, errs, tt.wantErrNum, "errors: %v", errs)
			if tt.wantErr != nil {
				assert.ErrorIs(t, errs[0], tt.wantErr)
			}
		})
	}
}

// TestForgedFrames writes what a process in the guest without the boot's key
// could: frames tagged with another key, headers copied from real frames with
// another payload, and a header announcing a large payload meant to swallow
// the agent's real frames. None is believed and every one is reported.
func TestForgedFrames(t *testing.T) {
	agent := NewWriter(nil, testKey)
	forger := NewWriter(nil, otherKey)
	exit1 := encodeWith(t, agent, Frame{Type: TypeExit, Name: "t", Payload: []byte("code\x001\x00")})
	forgedExit := encodeWith(t, forger, Frame{Type: TypeExit, Name: "t", Payload: []byte("code\x000\x00")}, Frame{Type: TypeDone})
	done := encodeWith(t, agent, Frame{Type: TypeDone})
	// A real header with its payload replaced.
	i := bytes.IndexByte(exit1, '\n')
	swapped := append(append([]byte(nil), exit1[:i+1]...), "code\x000\x00\n"...)
	// A header claiming a whole MaxPayload: it must not eat the frames after it.
	swallow := []byte(fmt.Sprintf("%sout t 1 %d %s %s\n", Magic, MaxPayload, strings.Repeat("a", 32), strings.Repeat("b", 32)))

	tests := []struct {
		name      string
		data      []byte
		wantTypes []string
		forged    int
	}{
		{"other key", concat(exit1, forgedExit, done), []string{TypeExit, TypeDone}, 2},
		{"payload swapped under a real header", concat(swapped, done), []string{TypeDone}, 0},
		{"header announcing a big payload", concat(exit1, swallow, done), []string{TypeExit, TypeDone}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frames, errs := readAll(tt.data)
			assert.Equal(t, tt.wantTypes, typesOf(frames))
			require.NotEmpty(t, errs)
			forged := 0
			for _, err := range errs {
				var ce *CorruptError
				if errors.As(err, &ce) {
					forged += ce.Forged
				}
			}
			assert.Equal(t, tt.forged, forged)
			for _, f := range frames {
				if f.Type == TypeExit {
					assert.Equal(t, "code\x001\x00", string(f.Payload), "only the agent's exit is believed")
				}
			}
		})
	}
}

func TestSequence(t *testing.T) {
	w := NewWriter(nil, testKey)
	f0 := encodeWith(t, w, Frame{Type: TypeHello})
	f1 := encodeWith(t, w, Frame{Type: TypeStart, Name: "a"})
	f2 := encodeWith(t, w, Frame{Type: TypeDone})

	t.Run("lost frame", func(t *testing.T) {
		frames, errs := readAll(concat(f0, f2))
		assert.Len(t, frames, 2)
		require.Len(t, errs, 1)
		assert.ErrorIs(t, errs[0], ErrSequence)
	})
	t.Run("replayed frame is dropped", func(t *testing.T) {
		frames, errs := readAll(concat(f0, f1, f1, f2))
		assert.Len(t, frames, 3)
		require.Len(t, errs, 1)
		assert.ErrorIs(t, errs[0], ErrCorrupt)
		assert.ErrorContains(t, errs[0], "replayed")
	})
}

func typesOf(frames []Frame) []string {
	var types []string
	for _, f := range frames {
		types = append(types, f.Type)
	}
	return types
}

func concat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func TestWriterRejectsBadTokens(t *testing.T) {
	w := NewWriter(io.Discard, testKey)
	assert.Error(t, w.WriteFrame("a b", "x", nil))
	assert.Error(t, w.WriteFrame("out", "x\ny", nil))
	assert.Error(t, w.WriteFrame("", "x", nil))
	assert.Error(t, w.WriteFrame("out", strings.Repeat("n", MaxName+1), nil))
	assert.Error(t, w.WriteFrame("out", "x", make([]byte, MaxPayload+1)))
	assert.NoError(t, w.WriteFrame("out", "", nil))
}

func FuzzReader(f *testing.F) {
	f.Add(encode(f, Frame{Type: TypeOutput, Name: "x", Payload: []byte("payload\n")}))
	f.Add(encode(f, Frame{Type: TypeHello}, Frame{Type: TypeExit, Name: "x", Payload: []byte("code\x000\x00")}, Frame{Type: TypeDone}))
	f.Add([]byte(Magic + "out x 0 3 " + strings.Repeat("0", 32) + " " + strings.Repeat("0", 32) + "\nab"))
	// The attacks of vmtest/testdata/hostile: frames under another key, a
	// header announcing a whole MaxPayload, first-format frames.
	f.Add(concat(encode(f, Frame{Type: TypeHello}), encodeWith(f, NewWriter(nil, otherKey), Frame{Type: TypeExit, Name: "t", Payload: []byte("code\x000\x00")}, Frame{Type: TypeDone})))
	f.Add([]byte(fmt.Sprintf("%sout t 1 %d %s %s\n", Magic, MaxPayload, strings.Repeat("a", 32), strings.Repeat("b", 32))))
	f.Add([]byte("@VMT1 exit hostile 8 00000000\ncode\x000\x00\n@VMT1 out ../../../../tmp/x 2 00000000\nx\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), testKey)
		for i := 0; i < len(data)+2; i++ {
			fr, err := r.Next()
			if len(fr.Payload) > MaxPayload {
				t.Fatalf("payload of %d bytes", len(fr.Payload))
			}
			if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrSequence) {
				return
			}
		}
	})
}
