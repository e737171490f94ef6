package images

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"strings"
)

// StripDWARF returns a copy of the 64-bit little-endian ELF executable b
// without its DWARF sections (.debug_*), which nothing in a guest reads but
// which make up a quarter to a third of a Go test binary: every megabyte
// costs about 10 ms of initramfs unpacking per boot under software emulation.
// The symbol table stays, so tests can still resolve their own symbols (for
// uprobes, say). When b is not laid out as expected (DWARF inside a loaded
// segment, or before a section that is loaded) it is returned as it is, with
// ok false.
func StripDWARF(b []byte) (out []byte, ok bool) {
	out, err := stripDWARF(b)
	if err != nil {
		return b, false
	}
	return out, true
}

var errLayout = errors.New("unexpected ELF layout")

func stripDWARF(b []byte) ([]byte, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB {
		return nil, errLayout
	}
	isDebug := func(s *elf.Section) bool {
		return strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_")
	}
	// Every section to drop must follow every loaded section, so the
	// section indices that symbols and loaded sections refer to stay valid,
	// and lie beyond the loaded segments, which are kept byte for byte.
	firstDebug, lastAlloc := -1, -1
	for i, s := range f.Sections {
		if isDebug(s) {
			if s.Flags&elf.SHF_ALLOC != 0 {
				return nil, errLayout
			}
			if firstDebug < 0 {
				firstDebug = i
			}
		}
		if s.Flags&elf.SHF_ALLOC != 0 {
			lastAlloc = i
		}
	}
	if firstDebug < 0 {
		return nil, errLayout // nothing to strip
	}
	if firstDebug < lastAlloc {
		return nil, errLayout
	}
	// The kept prefix: everything up to the first non-loaded section.
	cut := uint64(len(b))
	for _, s := range f.Sections[1:] {
		if s.Flags&elf.SHF_ALLOC == 0 && s.Type != elf.SHT_NOBITS && s.Offset < cut {
			cut = s.Offset
		}
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Off+p.Filesz > cut {
			return nil, errLayout
		}
	}

	const shentsize = 64
	shoff := binary.LittleEndian.Uint64(b[0x28:])
	shnum := int(binary.LittleEndian.Uint16(b[0x3c:]))
	shstrndx := int(binary.LittleEndian.Uint16(b[0x3e:]))
	if shnum != len(f.Sections) || shoff+uint64(shnum)*shentsize > uint64(len(b)) {
		return nil, errLayout
	}

	out := append([]byte(nil), b[:cut]...)
	newIndex := make([]int, shnum)
	var headers [][]byte
	for i, s := range f.Sections {
		raw := append([]byte(nil), b[shoff+uint64(i)*shentsize:shoff+uint64(i+1)*shentsize]...)
		if isDebug(s) {
			newIndex[i] = -1
			continue
		}
		newIndex[i] = len(headers)
		if i > 0 && s.Flags&elf.SHF_ALLOC == 0 && s.Type != elf.SHT_NOBITS {
			// Move the section's bytes after what is kept so far.
			if s.Offset+s.FileSize > uint64(len(b)) {
				return nil, errLayout
			}
			if a := s.Addralign; a > 1 {
				for uint64(len(out))%a != 0 {
					out = append(out, 0)
				}
			}
			binary.LittleEndian.PutUint64(raw[0x18:], uint64(len(out)))
			out = append(out, b[s.Offset:s.Offset+s.FileSize]...)
		}
		headers = append(headers, raw)
	}
	// Links between sections (a symbol table's string table, the section a
	// relocation section applies to) by new index.
	remap := func(raw []byte, off int) error {
		old := binary.LittleEndian.Uint32(raw[off:])
		if old == 0 {
			return nil
		}
		if int(old) >= shnum || newIndex[old] < 0 {
			return errLayout
		}
		binary.LittleEndian.PutUint32(raw[off:], uint32(newIndex[old]))
		return nil
	}
	for _, raw := range headers {
		if err := remap(raw, 0x28); err != nil {
			return nil, err
		}
		typ := elf.SectionType(binary.LittleEndian.Uint32(raw[0x04:]))
		flags := elf.SectionFlag(binary.LittleEndian.Uint64(raw[0x08:]))
		if typ == elf.SHT_REL || typ == elf.SHT_RELA || flags&elf.SHF_INFO_LINK != 0 {
			if err := remap(raw, 0x2c); err != nil {
				return nil, err
			}
		}
	}
	if shstrndx >= shnum || newIndex[shstrndx] < 0 {
		return nil, errLayout
	}
	for len(out)%8 != 0 {
		out = append(out, 0)
	}
	newShoff := uint64(len(out))
	for _, raw := range headers {
		out = append(out, raw...)
	}
	binary.LittleEndian.PutUint64(out[0x28:], newShoff)
	binary.LittleEndian.PutUint16(out[0x3c:], uint16(len(headers)))
	binary.LittleEndian.PutUint16(out[0x3e:], uint16(newIndex[shstrndx]))
	return out, nil
}
