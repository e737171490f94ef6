package bpf

// The BPF object and its Go bindings are generated and committed. Regenerate
// them with `go generate ./bpf/...` (needs clang on PATH; ./gen.sh does the
// same and ./check-generated.sh proves the committed files are current).
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v2" -target bpfel -type skb_value -type counters -type create_path -type free_path skbstore skbstore.c

// The map operation benchmark (mapbench.c) is a separate object so that
// the storage programs' object does not change with it.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v2" -target bpfel -type bench_state mapbench mapbench.c

// The tag flow programs (tagflow.c): metadata written at tc ingress, read at
// later layers.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v2" -target bpfel -type reader_stats -type writer_stats -type tag_value tagflow tagflow.c

// The local storage comparison (storagebench.c): the skb-keyed map against
// socket storage, in one program type.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v2" -target bpfel -type bench_state storagebench storagebench.c
