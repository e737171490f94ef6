//go:build linux && !amd64

package guest

import "errors"

// writePort is x86's: other machines have no I/O ports (and vmtest gives
// them no exit device).
func writePort(port int64, val byte) error {
	return errors.New("no I/O ports on this architecture")
}
