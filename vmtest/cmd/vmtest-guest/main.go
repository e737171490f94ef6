//go:build linux

// Command vmtest-guest is the agent that vmtest puts into every guest image as
// its /init (or as u-root's uinit, with -init uroot). It is not meant to be
// run by hand: it reads the job the host placed in the image, runs it, reports
// over the result port and powers off.
package main

import "github.com/skbstore/skbstore/vmtest/internal/guest"

func main() { guest.Main() }
