#!/bin/sh
# Regenerates the BPF objects and their Go bindings (skbstore_bpfel.go,
# skbstore_bpfel.o) from skbstore.c and mapbench.c (mapbench_bpfel.go,
# mapbench_bpfel.o). Needs clang (14 or later) on PATH.
set -eu
cd "$(dirname "$0")"
exec go generate ./...
