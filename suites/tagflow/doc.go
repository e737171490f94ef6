// Package tagflow holds guest-side tests of the thread's real use case:
// per-packet metadata written at tc ingress into a hash map keyed by the
// skb's address, read at later layers of the stack (the socket layer, the
// UDP and TCP receive paths, tc egress after forwarding, an AF_PACKET tap),
// with skb->mark beside it as the baseline. Per case it records how many
// reads found the packet's tag (delivered), none (lost) or another
// packet's (wrong), and why a read was lost where the stack says (a clone,
// a reassembled fragment).
package tagflow
