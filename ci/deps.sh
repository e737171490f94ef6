#!/usr/bin/env bash
# Checks the host tools that `make vmtest` and `make test` need, for guests
# of the architectures given as arguments (default amd64). As root on
# Debian/Ubuntu it installs what is missing with apt-get; otherwise it stops
# and names exactly what to install.
set -euo pipefail

missing_pkgs=()
need() { # need COMMAND PACKAGE (sbin counts: a user's PATH may lack it)
	command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] || missing_pkgs+=("$2")
}

if ! command -v go >/dev/null 2>&1; then
	echo "vmtest: 'go' was not found on PATH: install Go 1.26 or newer (https://go.dev/doc/install)" >&2
	exit 1
fi
# QEMU for each guest architecture asked for (arguments: amd64, arm64;
# amd64 when none is given).
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(amd64)
for arch in "${archs[@]}"; do
	case "$arch" in
	amd64) need qemu-system-x86_64 qemu-system-x86 ;;
	arm64) need qemu-system-aarch64 qemu-system-arm ;;
	*)
		echo "vmtest: unknown guest architecture '$arch': give amd64 or arm64" >&2
		exit 2
		;;
	esac
done
# The kernel fetcher uses apt-get (with a private state, never the host's) and dpkg-deb.
need apt-get apt
need dpkg-deb dpkg
# depmod makes modules.dep for kernels whose packages ship none (7.x).
need depmod kmod
# mke2fs makes the disks the guest reads the test's files, GOROOT and the
# kernel's modules from.
need mke2fs e2fsprogs
# Debian's archive signing keys, to verify the kernel packages (Ubuntu lacks them by default).
if [ ! -e /usr/share/keyrings/debian-archive-keyring.gpg ] && [ ! -e /usr/share/keyrings/debian-archive-keyring.pgp ]; then
	missing_pkgs+=(debian-archive-keyring)
fi

if [ ${#missing_pkgs[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "vmtest: installing ${missing_pkgs[*]} with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
	exit 0
fi
echo "vmtest: missing packages: ${missing_pkgs[*]}" >&2
echo "vmtest: install them with: sudo apt-get install ${missing_pkgs[*]}" >&2
exit 1
