//go:build linux

package guest

import (
	"errors"
	"fmt"
	"os"

	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"
)

// loadModule loads one module file; compressed modules (.ko.xz, .ko.zst,
// .ko.gz) are decompressed in user space, so this works whatever the kernel's
// CONFIG_MODULE_DECOMPRESS says. A module that is already loaded is fine.
func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := kmodule.FileInit(f, "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("init_module: %w", err)
	}
	return nil
}
