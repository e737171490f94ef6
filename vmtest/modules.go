package vmtest

import (
	"fmt"
	"path/filepath"

	"github.com/skbstore/skbstore/kernels"
)

// KernelModules resolves modules of k (with their dependencies, in load
// order) to the Modules a run puts in the guest's initramfs and loads.
func KernelModules(k *kernels.Kernel, names ...string) ([]Module, error) {
	if len(names) == 0 {
		return nil, nil
	}
	mods, err := k.ResolveModules(names...)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Name, err)
	}
	out := make([]Module, 0, len(mods))
	for _, m := range mods {
		out = append(out, Module{Name: m.Name, Host: m.Path, Guest: filepath.Join(preloadDir, m.RelPath)})
	}
	return out, nil
}

// preloadDir is where modules to load at boot go in the initramfs: not
// below /lib/modules/<release>, which the modules disk covers (ModulesDisk)
// while they load.
const preloadDir = "/vmtest/modules"
