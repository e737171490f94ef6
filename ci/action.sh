#!/usr/bin/env bash
# The steps of this repository's GitHub Action (action.yml), one per
# argument: kvm, install, runner, run. The action's inputs come as INPUT_*
# variables. ci/action_test.go runs these steps on a fixture module.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

case "${1:-}" in
kvm)
	# GitHub's Linux runners have /dev/kvm but only for group kvm; the runner
	# still probes KVM with a real boot and falls back to emulation.
	if [ -e /dev/kvm ] && [ ! -w /dev/kvm ]; then
		echo 'KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"' | as_root tee /etc/udev/rules.d/99-kvm4all.rules >/dev/null
		as_root udevadm control --reload-rules
		as_root udevadm trigger --name-match=kvm
	fi
	;;
install)
	# deps.sh names or installs what is missing (as root, with apt-get).
	# QEMU for the guests' architecture, and arm64's when a kernel names it.
	archs=("${INPUT_ARCH:-amd64}")
	case ",${INPUT_KERNEL:-}," in *"/arm64,"*) archs+=(arm64) ;; esac
	as_root env "PATH=$PATH" DEBIAN_FRONTEND=noninteractive "$here/ci/deps.sh" "${archs[@]}"
	;;
runner)
	bin="${RUNNER_TEMP:-/tmp}/vmtest-bin"
	mkdir -p "$bin"
	(cd "$here" && CGO_ENABLED=0 GOBIN="$bin" go install ./vmtest/cmd/vmtest)
	echo "$bin" >>"$GITHUB_PATH"
	echo "vmtest: installed $bin/vmtest"
	;;
run)
	cd "${INPUT_WORKING_DIRECTORY:-.}"
	results="$(mkdir -p "${INPUT_RESULTS:-vmtest-results}" && cd "${INPUT_RESULTS:-vmtest-results}" && pwd)"
	echo "results=$results" >>"$GITHUB_OUTPUT"
	# Artifact names take no ':', '/' or ','; a kernel name may have them.
	arch="${INPUT_ARCH:-amd64}"
	suffix=""
	[ "$arch" = amd64 ] || suffix="-$arch"
	artifact="${INPUT_ARTIFACT_NAME:-vmtest-results-${GITHUB_JOB:-job}-${INPUT_KERNEL:-6.1}$suffix}"
	echo "artifact=$(printf '%s' "$artifact" | tr -c 'A-Za-z0-9._-' '_')" >>"$GITHUB_OUTPUT"
	args=(run -kernel "${INPUT_KERNEL:-6.1}" -arch "$arch" -cpus "${INPUT_CPUS:-2}" -memory "${INPUT_MEMORY:-1024}" -results "$results")
	if [ -n "${INPUT_MODULES:-}" ]; then
		args+=(-modules "$INPUT_MODULES")
	fi
	read -r -a gotest <<<"${INPUT_GO_TEST:-./...}"
	# vmtest run writes the summary to $GITHUB_STEP_SUMMARY and exits
	# non-zero on any failed test or guest, which fails the job.
	exec vmtest "${args[@]}" -- go test "${gotest[@]}"
	;;
*)
	echo "usage: $0 kvm|install|runner|run" >&2
	exit 2
	;;
esac
