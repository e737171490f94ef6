#!/bin/sh
# Proves that the committed generated files match skbstore.c,
# mapbench.c, tagflow.c and storagebench.c: regenerates them in a temporary copy of this directory and
# compares. Exits 0 when they match, 1 when they differ, and 0 with a
# notice when clang is missing (so CI without clang does not fail on it);
# set REQUIRE_CLANG=1 to make that 2.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v "${BPF2GO_CC:-clang}" >/dev/null 2>&1; then
	echo "check-generated: ${BPF2GO_CC:-clang} not found, generated BPF files not checked" >&2
	[ "${REQUIRE_CLANG:-0}" = 1 ] && exit 2
	exit 0
fi
tmp=$(mktemp -d "$here/.check-generated.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
# Same package path depth, so bpf2go's -fdebug-prefix-map gives the same
# relative paths and the object is byte for byte comparable.
cp "$here"/*.go "$here"/*.c "$tmp"/
cp -r "$here"/include "$tmp"/
generated="skbstore_bpfel.go skbstore_bpfel.o mapbench_bpfel.go mapbench_bpfel.o tagflow_bpfel.go tagflow_bpfel.o storagebench_bpfel.go storagebench_bpfel.o"
for f in $generated; do rm -f "$tmp/$f"; done
(cd "$tmp" && go generate ./...)
status=0
for f in $generated; do
	if ! cmp -s "$here/$f" "$tmp/$f"; then
		echo "check-generated: bpf/$f is out of date: run bpf/gen.sh (or go generate ./bpf/...) and commit the result" >&2
		status=1
	fi
done
[ $status = 0 ] && echo "check-generated: bpf/{skbstore,mapbench,tagflow,storagebench}_bpfel.{go,o} are up to date"
exit $status
