module github.com/skbstore/skbstore/suites

go 1.26.0

require (
	github.com/skbstore/skbstore/bpf v0.0.0
	github.com/stretchr/testify v1.12.1
	github.com/vishvananda/netlink v1.3.0
	github.com/vishvananda/netns v0.0.4
	golang.org/x/sys v0.50.0
)

require (
	github.com/cilium/ebpf v0.22.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
)

// The suites are tested with the BPF programs of the same checkout.
replace github.com/skbstore/skbstore/bpf => ../bpf
