// Package skbbench measures what skb-keyed storage costs, inside a vmtest
// guest: the packets per second of fixed UDP and TCP workloads over
// loopback and a veth pair with no BPF programs, with the "tracepoints"
// strategy and with the "complete" strategy, for each map variant, as a
// ratio to no programs (TestStorageOverhead); and the in-kernel cost of the
// map's update, lookup and delete for 8-byte pointer keys per variant
// (TestMapOpCost).
//
// The tests attach BPF programs to the running kernel, so they skip unless
// VMTEST_GUEST=1 (set by the vmtest runner) or SKBSTORE_ALLOW_HOST=1. Under
// software emulation (TCG) absolute figures mean little: compare the
// ratios, which are measured in the same run with the configurations
// interleaved. Results go to $VMTEST_ARTIFACTS: metrics/*.json (the
// runner's measurements table), bench/*.json and bench/storage.md.
package skbbench
