#!/bin/sh
# Regenerates the BPF object and its Go bindings (skbstore_bpfel.go,
# skbstore_bpfel.o) from skbstore.c. Needs clang (14 or later) on PATH.
set -eu
cd "$(dirname "$0")"
exec go generate ./...
