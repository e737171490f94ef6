package kernels

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ReadModule returns a module's ELF bytes, decompressing .ko.xz, .ko.zst and
// .ko.gz files: what finit_module wants on any kernel, whatever its
// CONFIG_MODULE_DECOMPRESS says.
func ReadModule(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	switch {
	case strings.HasSuffix(path, ".xz"):
		xr, err := xz.NewReader(f)
		if err != nil {
			return nil, err
		}
		r = xr
	case strings.HasSuffix(path, ".zst"):
		zr, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(path, ".gz"):
		gr, err := gzip.NewReader(f)
		if err != nil {
			return nil, err
		}
		r = gr
	}
	return io.ReadAll(r)
}

// modinfo is a module's .modinfo section: "key=value" strings.
type modinfo []string

// readModinfo reads the .modinfo section of a (possibly compressed) module.
func readModinfo(path string) (modinfo, error) {
	b, err := ReadModule(path)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	ef, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	sec := ef.Section(".modinfo")
	if sec == nil {
		return nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: read .modinfo: %w", path, err)
	}
	var mi modinfo
	for _, s := range bytes.Split(data, []byte{0}) {
		if len(s) > 0 {
			mi = append(mi, string(s))
		}
	}
	return mi, nil
}

// get returns every value of key, in order.
func (mi modinfo) get(key string) []string {
	var vs []string
	for _, kv := range mi {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			vs = append(vs, v)
		}
	}
	return vs
}
