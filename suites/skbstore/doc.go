// Package skbstore holds the guest suites for per-skb storage kept in a
// hash map keyed by the skb address (see package bpf). Each test drives
// real traffic (UDP and TCP over loopback, TCP over a veth pair, drops,
// AF_PACKET clones) with every free strategy and map variant, then checks
// what must hold and records what was measured:
//
//   - verifier logs in $VMTEST_ARTIFACTS/verifier/<strategy>-<variant>/<prog>.log
//   - results in $VMTEST_ARTIFACTS/skbstore/<suite>.json: kernel, strategy,
//     variant, counters, leaks, stale entries, drop reasons, checks.
//
// The tests attach BPF programs to the running kernel, so they skip unless
// VMTEST_GUEST=1 (set by the vmtest runner in its guests) or
// SKBSTORE_ALLOW_HOST=1.
package skbstore
