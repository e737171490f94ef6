package kernels

import "strings"

// MatrixKernel is one kernel of the project's matrix: the kernels its
// suites are run on, from the oldest LTS to mainline.
type MatrixKernel struct {
	Name   string // what -kernel takes, without the architecture
	Arch   string // the guest's architecture; "" means DefaultArch
	Source string // SourceDebian or SourceOCI: which source serves it (Debian first)
	Note   string // what it stands for
	// Local marks the kernels `make test` (so every change, in .ci/run)
	// boots; the GitHub workflow boots them all.
	Local bool
}

// Matrix returns the kernel matrix, oldest first: the one list the
// Makefile (-kernel all), `vmtest kernels`, the GitHub workflow (through
// `vmtest kernels -matrix`) and the README follow.
func Matrix() []MatrixKernel {
	return []MatrixKernel{
		{Name: "5.4", Source: SourceOCI, Note: "LTS"},
		{Name: "5.10", Source: SourceDebian, Note: "LTS; Debian 11 bullseye"},
		{Name: "5.15", Source: SourceOCI, Note: "LTS"},
		{Name: "6.1", Source: SourceDebian, Note: "LTS; Debian 12 bookworm; the default", Local: true},
		{Name: "6.6", Source: SourceOCI, Note: "LTS"},
		{Name: "6.12", Source: SourceDebian, Note: "LTS; Debian 13 trixie", Local: true},
		{Name: "7.2", Source: SourceDebian, Note: "Debian unstable (sid)"},
		{Name: "7.3", Source: SourceDebian, Note: "Debian experimental"},
		// arm64 from 6.4 on: older arm64 kernels cannot attach fentry/fexit
		// to kernel functions, so the suites skip there (README).
		{Name: "6.12", Arch: "arm64", Source: SourceDebian, Note: "arm64, emulated on x86 hosts; Debian 13 trixie", Local: true},
		{Name: "7.2", Arch: "arm64", Source: SourceDebian, Note: "arm64; Debian unstable (sid)"},
		{Name: "stable", Source: SourceOCI, Note: "the newest stable release (a moving tag)"},
		{Name: "mainline", Source: SourceOCI, Note: "the newest mainline release or -rc (a moving tag)"},
	}
}

// FullName is the name Cache.Get takes for the kernel: Name, followed by
// "/ARCH" for another architecture than DefaultArch ("6.12/arm64").
func (k MatrixKernel) FullName() string { return k.Name + archSuffix(k.Arch) }

// MatrixNames returns the names of the matrix's kernels from source ("" for
// all), oldest first, as FullName gives them.
func MatrixNames(source string) []string {
	var names []string
	for _, k := range Matrix() {
		if source == "" || k.Source == source {
			names = append(names, k.FullName())
		}
	}
	return names
}

// MatrixEntry is a matrix kernel as the GitHub workflow's job matrix takes
// it (`vmtest kernels -matrix`).
type MatrixEntry struct {
	Kernel string `json:"kernel"` // FullName
	Arch   string `json:"arch"`
	// ID names the kernel where "/" is not allowed (artifact and cache
	// names): "6.12-arm64".
	ID string `json:"id"`
}

// MatrixEntries returns the matrix for the workflow, oldest first.
func MatrixEntries() []MatrixEntry {
	var out []MatrixEntry
	for _, k := range Matrix() {
		arch := k.Arch
		if arch == "" {
			arch = DefaultArch
		}
		out = append(out, MatrixEntry{Kernel: k.FullName(), Arch: arch, ID: strings.ReplaceAll(k.FullName(), "/", "-")})
	}
	return out
}
