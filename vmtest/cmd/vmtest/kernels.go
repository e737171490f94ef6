package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/skbstore/skbstore/kernels"
)

func kernelsCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("vmtest kernels", flag.ContinueOnError)
	fetch := fs.String("fetch", "", "fetch this kernel version (or local kernel path) into the cache")
	matrix := fs.Bool("matrix", false, "print the kernel matrix as a JSON list of {kernel, arch, id} (for a CI job matrix: include: fromJSON(...); id is the name without \"/\") and exit")
	debug := fs.Bool("debug", false, "with -fetch: also fetch the kernel's vmlinux with debug info, for gdb (Debian: its -dbg package, some 300 MB; local: the vmlinux beside it)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: vmtest kernels [-fetch VERSION [-debug]]\n\nLists available and cached kernels; -fetch fetches one and prints its release and image\n(and, with -debug, its vmlinux with symbols, which -gdb then names in the gdb command).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if *matrix {
		b, err := json.Marshal(kernels.MatrixEntries())
		if err != nil {
			return err
		}
		fmt.Println(string(b))
		return nil
	}
	c, err := kernels.NewCache()
	if err != nil {
		return err
	}
	c.Progress = os.Stderr
	if *fetch != "" {
		k, err := c.Get(ctx, *fetch)
		if err != nil {
			return err
		}
		fmt.Printf("%s: %s %s\n", *fetch, k.Release, k.Image)
		if *debug {
			v, err := c.Symbols(ctx, k)
			if err != nil {
				return err
			}
			fmt.Printf("%s: vmlinux %s\n", *fetch, v)
		}
		return nil
	}
	if *debug {
		return errors.New("-debug goes with -fetch VERSION")
	}
	cached, err := c.List()
	if err != nil {
		return err
	}
	oci := c.OCIRepo
	if oci == "" {
		oci = "none (VMTEST_OCI_REPO is empty)"
	}
	fmt.Printf("kernel matrix (-kernel all; default %s). Sources: Debian's archive, then the OCI repository %s\n", kernels.DefaultVersion, oci)
	for _, m := range kernels.Matrix() {
		have := ""
		for _, k := range cached {
			if k.Name == m.FullName() {
				have = "cached: " + k.Release
				break
			}
		}
		if m.Local {
			m.Note += "; booted by make test"
		}
		fmt.Printf("  %-11s %-7s %-70s %s\n", m.FullName(), m.Source, m.Note, have)
	}
	fmt.Printf("Debian also has the -generic and -rt flavours of %s; the OCI repository any tag it has\n"+
		"(6.6.134, longterm, NAME-debug, NAME-selftests) and NAME@sha256:... digests. Any of them for\n"+
		"arm64 guests: NAME/arm64 (Debian's arm64 packages, the OCI image's linux/arm64 platform).\n", strings.Join(kernels.Available(), ", "))
	fmt.Printf("cached in %s:\n", c.Dir)
	if len(cached) == 0 {
		fmt.Println("  (none)")
	}
	for _, k := range cached {
		fmt.Printf("  %-11s %-28s %-8s %-22s %6.0f MB on disk, fetched %s\n", k.Name, k.Release, k.Source, k.Version,
			float64(k.TreeSize+k.DebSize)/1e6, k.FetchedAt.Local().Format("2006-01-02 15:04"))
	}
	return nil
}
