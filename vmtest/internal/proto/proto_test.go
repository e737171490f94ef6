package proto

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func encode(t *testing.T, frames ...Frame) []byte {
	t.Helper()
	var b bytes.Buffer
	w := NewWriter(&b)
	for _, f := range frames {
		require.NoError(t, w.WriteFrame(f.Type, f.Name, f.Payload))
	}
	return b.Bytes()
}

// readAll collects frames and the errors met on the way until EOF.
func readAll(data []byte) (frames []Frame, errs []error) {
	r := NewReader(bytes.NewReader(data))
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
		{Type: TypeHello, Payload: []byte(`{"release":"6.1.0"}`)},
		{Type: TypeOutput, Name: "t1", Payload: []byte("=== RUN TestA\n@VMT1 fake header inside payload\n")},
		{Type: TypeFile, Name: EscapeName("verifier/a b.log"), Payload: binary},
		{Type: TypeOutput, Name: "t1", Payload: nil},
		{Type: TypeDone},
	}
	got, errs := readAll(encode(t, in...))
	require.Empty(t, errs)
	require.Len(t, got, len(in))
	for i := range in {
		assert.Equal(t, in[i].Type, got[i].Type)
		assert.Equal(t, in[i].Name, got[i].Name)
		assert.Equal(t, len(in[i].Payload), len(got[i].Payload))
		assert.True(t, bytes.Equal(in[i].Payload, got[i].Payload), "payload %d", i)
	}
	name, err := UnescapeName(got[2].Name)
	require.NoError(t, err)
	assert.Equal(t, "verifier/a b.log", name)
}

func TestDamagedInput(t *testing.T) {
	a := Frame{Type: TypeOutput, Name: "x", Payload: []byte("first\n")}
	b := Frame{Type: TypeExit, Name: "x", Payload: []byte(`{"code":0}`)}
	good := encode(t, a, b)
	fa := encode(t, a)

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
		{"garbage between", append(append(append([]byte(nil), fa...), "junk without newline "...), encode(t, b)...), []string{TypeOutput, TypeExit}, ErrCorrupt, 1},
		{"garbage after", append(append([]byte(nil), good...), "tail"...), []string{TypeOutput, TypeExit}, ErrCorrupt, 1},
		{"only garbage", []byte("hello\nworld\n"), nil, ErrCorrupt, 1},
		{"bad checksum drops only that frame", flipped, []string{TypeExit}, ErrCorrupt, 1},
		{"truncated payload", good[:len(good)-4], []string{TypeOutput}, io.ErrUnexpectedEOF, 1},
		{"truncated header", good[:len(fa)+8], []string{TypeOutput}, io.ErrUnexpectedEOF, 1},
		{"bad length", []byte("@VMT1 out x notanumber 00000000\n"), nil, ErrCorrupt, 1},
		{"huge length", []byte("@VMT1 out x 999999999999 00000000\n"), nil, ErrCorrupt, 1},
		{"too few fields", []byte("@VMT1 out x\n"), nil, ErrCorrupt, 1},
		{"empty", nil, nil, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frames, errs := readAll(tt.data)
			var types []string
			for _, f := range frames {
				types = append(types, f.Type)
			}
			assert.Equal(t, tt.wantTypes, types)
			require.Len(t, errs, tt.wantErrNum, "errors: %v", errs)
			if tt.wantErr != nil {
				assert.ErrorIs(t, errs[0], tt.wantErr)
			}
		})
	}
}

func TestWriterRejectsBadTokens(t *testing.T) {
	w := NewWriter(io.Discard)
	assert.Error(t, w.WriteFrame("a b", "x", nil))
	assert.Error(t, w.WriteFrame("out", "x\ny", nil))
	assert.Error(t, w.WriteFrame("", "x", nil))
	assert.NoError(t, w.WriteFrame("out", "", nil))
}

func FuzzReader(f *testing.F) {
	var b bytes.Buffer
	w := NewWriter(&b)
	_ = w.WriteFrame(TypeOutput, "x", []byte("payload\n"))
	f.Add(b.Bytes())
	f.Add([]byte("@VMT1 out x 3 00000000\nab"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data))
		for i := 0; i < len(data)+2; i++ {
			_, err := r.Next()
			if err != nil && !errors.Is(err, ErrCorrupt) {
				return
			}
		}
	})
}
