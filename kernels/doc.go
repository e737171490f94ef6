// Package kernels provides the kernels that vmtest boots: it resolves a
// version name such as "6.1" or "7.2-generic" to exact Debian packages,
// downloads and verifies them, and keeps the extracted kernel image, config
// and modules in a content-addressed on-disk cache that is safe to share
// between concurrent processes.
//
// Kernels are amd64 (an x86 bzImage) or arm64 (a plain arm64 Image): a name
// ending in "/arm64" ("6.12/arm64", "stable/arm64") asks for arm64, any
// other for amd64 (see SplitArch), and Kernel.Arch says which a kernel is.
//
// A name may also be a path to a local kernel (a bzImage or arm64 Image, or
// a directory holding vmlinuz, config and lib/modules/<release>), which is
// used in place. Versions Debian lacks come from an OCI repository of kernel images
// (like cilium/ebpf's CI kernels) when Cache.OCIRepo or $VMTEST_OCI_REPO is
// set.
//
// Fetching Debian kernels needs apt-get and dpkg-deb on the host (every
// Debian or Ubuntu machine has them) and Debian's archive keyring
// (debian-archive-keyring). The host's apt sources, hooks and pinning are
// never read or changed: each kernel series and architecture gets a private
// apt configuration; only the host's proxy and Release-date settings carry over.
// kmod's depmod makes modules.dep when installed, else a slower pure-Go
// generator does.
//
// The cache, under Cache.Dir/kernels:
//
//	apt/<series>/            private apt config, package lists, apt cache (amd64)
//	apt/<series>-<arch>/     the same for another architecture: apt/6.12-arm64/
//	debs/<sha256>.deb        downloaded packages, named by their hash
//	blobs/sha256/<hex>       downloaded OCI layers, named by their digest
//	trees/<package>_<version>/ or trees/oci-<manifest digest>/
//	    vmlinuz config System.map lib/modules/<release>/...
//	    complete             metadata (JSON), written last
//	resolved/<name>.json     what a name last resolved to, and when ("/" in a name is "_": 6.12_arm64.json)
//	locks/, tmp/             flock files; staging on the same filesystem
//
// A tree without an intact complete marker, or whose files disagree with
// it, is never returned: it is fetched again. Packages are checked against
// the size and SHA256 of the signed package index before extraction.
package kernels
