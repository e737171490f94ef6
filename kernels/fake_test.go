package kernels

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"
	"github.com/ulikunitz/xz"
)

// fakeELF returns a minimal ELF64 relocatable object with a .modinfo
// section holding the given "key=value" strings: enough for debug/elf and
// for readModinfo.
func fakeELF(modinfo ...string) []byte {
	var info bytes.Buffer
	for _, kv := range modinfo {
		info.WriteString(kv)
		info.WriteByte(0)
	}
	return elfFile(elf.ET_REL, elf.EM_X86_64, elfSection{".modinfo", info.Bytes()})
}

// fakeVmlinux is an executable like a vmlinux with debug info: a .rodata
// with the banner of release, built as fakeBzImage says, and a .debug_info.
func fakeVmlinux(release string, debugInfo bool) []byte {
	return fakeVmlinuxBuild(release, "#1 SMP", debugInfo)
}

// fakeVmlinuxBuild is fakeVmlinux with another UTS_VERSION.
func fakeVmlinuxBuild(release, uts string, debugInfo bool) []byte {
	return fakeVmlinuxFor(elf.EM_X86_64, release, uts, debugInfo)
}

// fakeVmlinuxFor is fakeVmlinuxBuild for another machine: the vmlinux of
// fakeArm64ImageBuild is an EM_AARCH64 one.
func fakeVmlinuxFor(machine elf.Machine, release, uts string, debugInfo bool) []byte {
	secs := []elfSection{{".rodata", []byte("\x00Linux version " + release + " (test@example) (gcc 12.2.0) " + uts + "\n\x00")}}
	if debugInfo {
		secs = append(secs, elfSection{".debug_info", make([]byte, 64)})
	}
	return elfFile(elf.ET_EXEC, machine, secs...)
}

// elfSection is one SHT_PROGBITS section of elfFile.
type elfSection struct {
	name string
	data []byte
}

// elfFile lays out an ELF64 little-endian file with the given sections
// and a section name table, no segments.
func elfFile(typ elf.Type, machine elf.Machine, secs ...elfSection) []byte {
	shstr := []byte{0}
	nameOff := make([]uint32, len(secs)+1)
	for i, s := range secs {
		nameOff[i] = uint32(len(shstr))
		shstr = append(append(shstr, s.name...), 0)
	}
	nameOff[len(secs)] = uint32(len(shstr))
	shstr = append(append(shstr, ".shstrtab"...), 0)
	const ehsize, shentsize = 64, 64
	off := uint64(ehsize)
	offs := make([]uint64, len(secs))
	for i, s := range secs {
		offs[i] = off
		off += uint64(len(s.data))
	}
	shstrOff := off
	shoff := shstrOff + uint64(len(shstr))

	var b bytes.Buffer
	le := binary.LittleEndian
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	b.Write(make([]byte, 8))
	binary.Write(&b, le, uint16(typ))
	binary.Write(&b, le, uint16(machine))
	binary.Write(&b, le, uint32(1))
	binary.Write(&b, le, uint64(0)) // entry
	binary.Write(&b, le, uint64(0)) // phoff
	binary.Write(&b, le, shoff)
	binary.Write(&b, le, uint32(0)) // flags
	binary.Write(&b, le, uint16(ehsize))
	binary.Write(&b, le, uint16(0)) // phentsize
	binary.Write(&b, le, uint16(0)) // phnum
	binary.Write(&b, le, uint16(shentsize))
	binary.Write(&b, le, uint16(len(secs)+2)) // shnum: null, sections, .shstrtab
	binary.Write(&b, le, uint16(len(secs)+1)) // shstrndx
	for _, s := range secs {
		b.Write(s.data)
	}
	b.Write(shstr)
	sh := func(name, typ uint32, off, size uint64) {
		binary.Write(&b, le, name)
		binary.Write(&b, le, typ)
		binary.Write(&b, le, uint64(0)) // flags
		binary.Write(&b, le, uint64(0)) // addr
		binary.Write(&b, le, off)
		binary.Write(&b, le, size)
		binary.Write(&b, le, uint32(0)) // link
		binary.Write(&b, le, uint32(0)) // info
		binary.Write(&b, le, uint64(1)) // addralign
		binary.Write(&b, le, uint64(0)) // entsize
	}
	sh(0, 0, 0, 0)
	for i, s := range secs {
		sh(nameOff[i], uint32(elf.SHT_PROGBITS), offs[i], uint64(len(s.data)))
	}
	sh(nameOff[len(secs)], uint32(elf.SHT_STRTAB), shstrOff, uint64(len(shstr)))
	return b.Bytes()
}

// compress encodes data as a module file with the given suffix would be.
func compress(t testing.TB, suffix string, data []byte) []byte {
	var b bytes.Buffer
	switch suffix {
	case ".ko":
		return data
	case ".ko.xz":
		w, err := xz.NewWriter(&b)
		require.NoError(t, err)
		w.Write(data)
		require.NoError(t, w.Close())
	case ".ko.zst":
		w, err := zstd.NewWriter(&b)
		require.NoError(t, err)
		w.Write(data)
		require.NoError(t, w.Close())
	case ".ko.gz":
		w := gzip.NewWriter(&b)
		w.Write(data)
		require.NoError(t, w.Close())
	default:
		t.Fatalf("unknown suffix %s", suffix)
	}
	return b.Bytes()
}

// fakeBzImage is a file with a bzImage setup header naming release.
func fakeBzImage(release string, size int) []byte {
	if size < 0x400 {
		size = 0x400
	}
	b := make([]byte, size)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x20e:], 0x100)
	copy(b[0x300:], release+" (test@example) #1 SMP\x00")
	return b
}

// fakeArm64Image is a file laid out as an arm64 Image with an EFI stub (as
// Debian's are): the 64-byte header, a PE header whose one section reaches
// the end of the file, and in .rodata a format string that looks like a
// banner, then the banner of release.
func fakeArm64Image(release string, size int) []byte {
	return fakeArm64ImageBuild(release, "#1 SMP", size)
}

// fakeArm64ImageBuild is fakeArm64Image with another UTS_VERSION.
func fakeArm64ImageBuild(release, uts string, size int) []byte {
	if size < 0x2000 {
		size = 0x2000
	}
	b := make([]byte, size)
	le := binary.LittleEndian
	copy(b, "MZ")
	le.PutUint64(b[arm64ImageSizeOff:], uint64(size)+0x10000) // with BSS
	le.PutUint64(b[arm64FlagsOff:], 0xa)                      // little endian, 4K pages, anywhere
	copy(b[arm64MagicOff:], arm64Magic)
	le.PutUint32(b[arm64PEOff:], 0x40)
	copy(b[0x40:], "PE\x00\x00")
	le.PutUint16(b[0x44:], 0xaa64) // COFF: machine
	le.PutUint16(b[0x46:], 1)      // one section
	le.PutUint16(b[0x54:], 0)      // no optional header
	sec := b[0x58:]                // the section table
	copy(sec, ".text")
	le.PutUint32(sec[16:], uint32(size-0x1000)) // SizeOfRawData
	le.PutUint32(sec[20:], 0x1000)              // PointerToRawData
	copy(b[0x1000:], "Linux version %s (%s)\x00Linux version "+release+" (test@example) (gcc-12 (Debian 12.2.0-14) 12.2.0, GNU ld (GNU Binutils) 2.40) "+uts+"\n\x00")
	return b
}

// fakeImage is the image of a fake kernel: an arm64 Image if its release
// says arm64 (as Debian's do: 6.1.0-41-cloud-arm64), else a bzImage.
func fakeImage(release string, size int) []byte {
	if archOfName(release) == "arm64" {
		return fakeArm64Image(release, size)
	}
	return fakeBzImage(release, size)
}

// archOfName is the architecture of a fake package or release, by its name.
func archOfName(name string) string {
	if strings.Contains(name, "arm64") {
		return "arm64"
	}
	return "amd64"
}

// gzipBytes compresses data with gzip.
func gzipBytes(t testing.TB, data []byte) []byte {
	return compress(t, ".ko.gz", data)
}

// fakeMod is one module of a fake kernel.
type fakeMod struct {
	rel     string // path under lib/modules/<release>, e.g. kernel/drivers/net/veth.ko
	depends string // the depends= list
}

// fakeKernelFiles lays out a kernel as Debian packages it, into root:
// split (7.x style) puts everything under usr/lib/modules/<release>.
func fakeKernelFiles(t testing.TB, root, release string, split bool, mods []fakeMod, builtin []string, imageSize int) {
	modDir := filepath.Join(root, "lib", "modules", release)
	image := filepath.Join(root, "boot", "vmlinuz-"+release)
	config := filepath.Join(root, "boot", "config-"+release)
	if split {
		modDir = filepath.Join(root, "usr", "lib", "modules", release)
		image = filepath.Join(modDir, "vmlinuz")
		config = filepath.Join(modDir, "config")
	}
	write := func(p string, data []byte) {
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, data, 0o644))
	}
	write(image, fakeImage(release, imageSize))
	write(config, []byte("# test config\nCONFIG_BPF_SYSCALL=y\nCONFIG_DEBUG_INFO_BTF=y\nCONFIG_VETH=m\n# CONFIG_FOO is not set\nCONFIG_LOCALVERSION=\"-test\"\n"))
	var order []string
	for _, m := range mods {
		name := moduleName(m.rel)
		write(filepath.Join(modDir, m.rel), compressFor(t, m.rel, fakeELF("license=GPL", "depends="+m.depends, "name="+name, "alias=fake-"+name)))
		order = append(order, strings.TrimSuffix(strings.TrimSuffix(m.rel, ".xz"), ".zst"))
	}
	write(filepath.Join(modDir, "modules.order"), []byte(strings.Join(order, "\n")+"\n"))
	write(filepath.Join(modDir, "modules.builtin"), []byte(strings.Join(builtin, "\n")+"\n"))
}

func compressFor(t testing.TB, rel string, data []byte) []byte {
	for _, s := range []string{".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(rel, s) {
			return compress(t, s, data)
		}
	}
	return data
}

// buildDeb packs root into a .deb named name_version, of the architecture
// its name says.
func buildDeb(t testing.TB, root, name, version, depends string) []byte {
	ctl := fmt.Sprintf("Package: %s\nVersion: %s\nArchitecture: %s\nMaintainer: test <test@example.com>\nDescription: test package\n", name, version, archOfName(name))
	if depends != "" {
		ctl += "Depends: " + depends + "\n"
	}
	require.NoError(t, os.MkdirAll(filepath.Join(root, "DEBIAN"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "DEBIAN", "control"), []byte(ctl), 0o644))
	out := filepath.Join(t.TempDir(), name+".deb")
	cmd := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", root, out)
	b, err := cmd.CombinedOutput()
	require.NoError(t, err, "dpkg-deb: %s", b)
	data, err := os.ReadFile(out)
	require.NoError(t, err)
	return data
}

// fakePkg is a package in the fake archive.
type fakePkg struct {
	name, version, depends, file string
	arch                         string // Debian architecture: from the name (see archOfName)
	data                         []byte
}

// fakeArchive is a local, unsigned Debian archive over HTTP, serving both
// the main and the security archive (/debian and /debian-security), with
// amd64 and arm64 package lists. It counts requests so tests can tell what
// touched the network.
type fakeArchive struct {
	t   testing.TB
	srv *httptest.Server

	mu      sync.Mutex
	suites  map[string][]fakePkg
	missing map[string]bool // pool files listed but answered 404
	// validUntil, when set, goes in every Release file.
	validUntil time.Time
	// gzipArm64 makes addKernel gzip arm64 kernels' vmlinuz.
	gzipArm64 bool
	requests  map[string]int // path -> count
}

func newFakeArchive(t testing.TB) *fakeArchive {
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("needs apt-get")
	}
	a := &fakeArchive{t: t, suites: map[string][]fakePkg{}, missing: map[string]bool{}, requests: map[string]int{}}
	a.srv = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.srv.Close)
	return a
}

// cache returns a Cache using this archive.
func (a *fakeArchive) cache(dir string) *Cache {
	return &Cache{Dir: dir, Mirror: a.srv.URL + "/debian", SecurityMirror: a.srv.URL + "/debian-security",
		insecureArchive: true, depmodMode: depmodBuiltin}
}

// add puts a package built from root into suite.
func (a *fakeArchive) add(suite, name, version, depends, root string) fakePkg {
	data := buildDeb(a.t, root, name, version, depends)
	arch := archOfName(name)
	p := fakePkg{name: name, version: version, depends: depends, data: data, arch: arch,
		file: "pool/main/l/linux/" + name + "_" + strings.ReplaceAll(version, ":", "%3a") + "_" + arch + ".deb"}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.suites[suite] = append(a.suites[suite], p)
	return p
}

// addKernel adds a whole kernel as Debian packages it: one linux-image
// package, or (split) a meta package with base, binary and modules parts.
func (a *fakeArchive) addKernel(suite, release, version string, split bool, mods []fakeMod, builtin []string) []fakePkg {
	root := a.t.TempDir()
	fakeKernelFiles(a.t, root, release, split, mods, builtin, 64*1024)
	if a.gzipArm64 && archOfName(release) == "arm64" {
		image := filepath.Join(root, "boot", "vmlinuz-"+release)
		if split {
			image = filepath.Join(root, "usr", "lib", "modules", release, "vmlinuz")
		}
		b, err := os.ReadFile(image)
		require.NoError(a.t, err)
		require.NoError(a.t, os.WriteFile(image, gzipBytes(a.t, b), 0o644))
	}
	if !split {
		return []fakePkg{a.add(suite, "linux-image-"+release+"-unsigned", version, "", root)}
	}
	modDir := filepath.Join("usr", "lib", "modules", release)
	part := func(kind string, files ...string) fakePkg {
		dst := a.t.TempDir()
		for _, f := range files {
			src := filepath.Join(root, modDir, f)
			require.NoError(a.t, os.MkdirAll(filepath.Dir(filepath.Join(dst, modDir, f)), 0o755))
			require.NoError(a.t, os.Rename(src, filepath.Join(dst, modDir, f)))
		}
		return a.add(suite, "linux-"+kind+"-"+release, version, "", dst)
	}
	base := part("base", "config", "modules.order", "modules.builtin")
	binary := part("binary", "vmlinuz")
	modules := part("modules", "kernel")
	meta := a.add(suite, "linux-image-"+release, version, fmt.Sprintf(
		"initramfs-tools | linux-initramfs-tool, linux-base-%[1]s (= %[2]s), linux-binary-%[1]s (= %[2]s), linux-modules-%[1]s (= %[2]s)",
		release, version), a.t.TempDir())
	return []fakePkg{meta, base, binary, modules}
}

func (a *fakeArchive) setMissing(file string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.missing[file] = true
}

// count returns how often paths containing substr were requested.
func (a *fakeArchive) count(substr string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for p, c := range a.requests {
		if strings.Contains(p, substr) {
			n += c
		}
	}
	return n
}

// hits returns how often exactly this path was requested.
func (a *fakeArchive) hits(path string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.requests[path]
}

// fakeArches are the architectures the fake archive has lists for.
var fakeArches = []string{"amd64", "arm64"}

func (a *fakeArchive) packagesIndex(suite, arch string) []byte {
	var b bytes.Buffer
	pkgs := a.suites[suite]
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].name < pkgs[j].name })
	for _, p := range pkgs {
		if p.arch != arch {
			continue
		}
		sum := sha256.Sum256(p.data)
		fmt.Fprintf(&b, "Package: %s\nVersion: %s\nArchitecture: %s\n", p.name, p.version, p.arch)
		if p.depends != "" {
			fmt.Fprintf(&b, "Depends: %s\n", p.depends)
		}
		fmt.Fprintf(&b, "Filename: %s\nSize: %d\nSHA256: %s\nDescription: test\n\n", p.file, len(p.data), hex.EncodeToString(sum[:]))
	}
	return b.Bytes()
}

func (a *fakeArchive) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.requests[r.URL.Path]++
	// /debian/dists/<suite>/... or /debian/pool/...
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 2)
	if len(parts) != 2 {
		http.NotFound(w, r)
		return
	}
	rest := parts[1]
	if strings.HasPrefix(rest, "pool/") {
		for _, pkgs := range a.suites {
			for _, p := range pkgs {
				if p.file == rest && !a.missing[rest] {
					w.Write(p.data)
					return
				}
			}
		}
		http.NotFound(w, r)
		return
	}
	f := strings.Split(rest, "/")
	if len(f) < 3 || f[0] != "dists" {
		http.NotFound(w, r)
		return
	}
	suite := f[1]
	switch p := path.Join(f[2:]...); p {
	case "Release":
		date := time.Now().Add(-time.Hour)
		if !a.validUntil.IsZero() {
			date = a.validUntil.Add(-7 * 24 * time.Hour)
			fmt.Fprintf(w, "Valid-Until: %s\n", a.validUntil.UTC().Format(time.RFC1123))
		}
		fmt.Fprintf(w, "Origin: test\nSuite: %s\nCodename: %s\nDate: %s\nArchitectures: %s\nComponents: main\nSHA256:\n",
			suite, suite, date.UTC().Format(time.RFC1123), strings.Join(fakeArches, " "))
		for _, arch := range fakeArches {
			idx := a.packagesIndex(suite, arch)
			sum := sha256.Sum256(idx)
			fmt.Fprintf(w, " %s %d main/binary-%s/Packages\n", hex.EncodeToString(sum[:]), len(idx), arch)
		}
	default:
		for _, arch := range fakeArches {
			if p == "main/binary-"+arch+"/Packages" {
				w.Write(a.packagesIndex(suite, arch))
				return
			}
		}
		http.NotFound(w, r)
	}
}
