package vmtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// CheckKernelImage checks that path holds a whole x86 bzImage, so that a
// truncated download or a file that is no kernel fails with a message that
// says so, before QEMU boots it into a triple fault that prints nothing.
// It reads the boot header (Documentation/arch/x86/boot.rst): the "HdrS"
// magic, and the sizes of the setup code and the protected-mode kernel,
// which together give the least size of the file.
func CheckKernelImage(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("vmtest: kernel: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("vmtest: kernel: %w", err)
	}
	if st.IsDir() {
		return fmt.Errorf("vmtest: kernel %s is a directory, not a bzImage", path)
	}
	var hdr [0x210]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("vmtest: kernel %s: %d bytes is too small for a kernel image", path, st.Size())
		}
		return fmt.Errorf("vmtest: kernel %s: %w", path, err)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		return fmt.Errorf("vmtest: kernel %s is not an x86 bzImage (no \"HdrS\" boot header): give a bzImage (arch/x86/boot/bzImage), not vmlinux or a compressed archive", path)
	}
	setup := int64(hdr[0x1f1])
	if setup == 0 {
		setup = 4
	}
	want := (setup+1)*512 + int64(binary.LittleEndian.Uint32(hdr[0x1f4:0x1f8]))*16
	if st.Size() < want {
		return fmt.Errorf("vmtest: kernel %s is truncated: %d bytes, its boot header says at least %d", path, st.Size(), want)
	}
	return nil
}
