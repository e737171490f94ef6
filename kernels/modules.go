package kernels

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Module is one loadable kernel module file.
type Module struct {
	Name    string // normalised module name, e.g. "act_mirred"
	Path    string // absolute host path; may end in .ko, .ko.xz, .ko.zst or .ko.gz
	RelPath string // relative to ModulesDir, as in modules.dep
}

// ModuleSet is the answer to ResolveModuleSet.
type ModuleSet struct {
	Load    []Module // module files to load, in order (dependencies first)
	Builtin []string // requested names that are built into the kernel image
}

// ResolveModules returns the given modules (names like "veth",
// "act_mirred", "sch_ingress") and all their dependencies from modules.dep,
// in load order (dependencies first), without duplicates. Modules built into
// the kernel (modules.builtin) need no file and are left out; use
// ResolveModuleSet to learn which they were. An unknown name is an error.
func (k *Kernel) ResolveModules(names ...string) ([]Module, error) {
	set, err := k.ResolveModuleSet(names...)
	if err != nil {
		return nil, err
	}
	return set.Load, nil
}

// ResolveModuleSet is ResolveModules that also reports which of the names
// are built into the kernel image.
func (k *Kernel) ResolveModuleSet(names ...string) (ModuleSet, error) {
	if len(names) == 0 {
		return ModuleSet{}, nil
	}
	if k.ModulesDir == "" {
		return ModuleSet{}, fmt.Errorf("kernel %s: has no modules, cannot load %s", k.Name, strings.Join(names, ", "))
	}
	idx, err := readModuleIndex(k.ModulesDir)
	if err != nil {
		return ModuleSet{}, fmt.Errorf("kernel %s: %w", k.Name, err)
	}
	set, err := idx.resolve(names)
	if err != nil {
		return ModuleSet{}, fmt.Errorf("kernel %s (%s): %w", k.Name, k.Release, err)
	}
	return set, nil
}

// moduleName turns a file name, path or user-given name into the kernel's
// module name: no directory, no .ko suffix, "-" spelled "_".
func moduleName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// isModuleFile reports whether a file name is a (possibly compressed) module.
func isModuleFile(name string) bool {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// moduleIndex is what modules.dep and modules.builtin say.
type moduleIndex struct {
	dir     string
	deps    map[string][]string // relpath -> dependency relpaths
	byName  map[string]string   // module name -> relpath
	builtin map[string]bool     // module names built into the image
}

func readModuleIndex(dir string) (*moduleIndex, error) {
	idx := &moduleIndex{dir: dir, deps: map[string][]string{}, byName: map[string]string{}, builtin: map[string]bool{}}
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s has no modules.dep (run `depmod -b ROOT RELEASE` to make it)", dir)
		}
		return nil, err
	}
	defer f.Close()
	if err := idx.parseDep(f); err != nil {
		return nil, fmt.Errorf("parse %s: %w", f.Name(), err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "modules.builtin"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			idx.builtin[moduleName(line)] = true
		}
	}
	return idx, nil
}

// parseDep reads modules.dep: "kernel/a.ko: kernel/b.ko kernel/c.ko".
func (idx *moduleIndex) parseDep(f *os.File) error {
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		mod, deps, ok := strings.Cut(line, ":")
		if !ok || mod == "" {
			return fmt.Errorf("line %d: no \"module:\" in %q", n, line)
		}
		idx.deps[mod] = strings.Fields(deps)
		idx.byName[moduleName(mod)] = mod
	}
	return sc.Err()
}

// resolve orders the named modules' files as libkmod does: each module after
// everything it depends on, each once.
func (idx *moduleIndex) resolve(names []string) (ModuleSet, error) {
	var set ModuleSet
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var visit func(rel string, chain []string) error
	visit = func(rel string, chain []string) error {
		switch state[rel] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("dependency cycle: %s", strings.Join(append(chain, moduleName(rel)), " -> "))
		}
		state[rel] = visiting
		next := append(slices.Clip(chain), moduleName(rel))
		// depmod lists the deepest dependencies last and modprobe loads the
		// list from its end: walking it backwards gives modprobe's order.
		deps := idx.deps[rel]
		for i := len(deps) - 1; i >= 0; i-- {
			if err := visit(deps[i], next); err != nil {
				return err
			}
		}
		state[rel] = done
		path := rel
		if !filepath.IsAbs(path) {
			path = filepath.Join(idx.dir, rel)
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("module %s is listed in modules.dep but its file is missing: %w", moduleName(rel), err)
		}
		set.Load = append(set.Load, Module{Name: moduleName(rel), Path: path, RelPath: rel})
		return nil
	}
	var unknown []string
	seenBuiltin := map[string]bool{}
	for _, name := range names {
		n := moduleName(name)
		if rel, ok := idx.byName[n]; ok {
			if err := visit(rel, nil); err != nil {
				return ModuleSet{}, err
			}
			continue
		}
		if idx.builtin[n] {
			if !seenBuiltin[n] {
				seenBuiltin[n] = true
				set.Builtin = append(set.Builtin, n)
			}
			continue
		}
		unknown = append(unknown, fmt.Sprintf("%q", name))
	}
	if len(unknown) > 0 {
		return ModuleSet{}, fmt.Errorf("unknown module %s: not in modules.dep nor modules.builtin of %s",
			strings.Join(unknown, ", "), idx.dir)
	}
	return set, nil
}
