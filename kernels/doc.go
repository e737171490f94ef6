// Package kernels provides the kernels that vmtest boots: it resolves a
// version name such as "6.1" or "7.2-generic" to exact Debian packages,
// downloads and verifies them, and keeps the extracted kernel image, config
// and modules in a content-addressed on-disk cache that is safe to share
// between concurrent processes.
//
// A name may also be a path to a local kernel (a bzImage, or a directory
// holding vmlinuz, config and lib/modules/<release>), which is used as is.
//
// Fetching Debian kernels needs apt-get and dpkg-deb on the host (every
// Debian or Ubuntu machine has them); the host's own apt configuration is
// never read or changed: each kernel series gets a private apt
// configuration, package lists and cache under the cache directory.
package kernels
