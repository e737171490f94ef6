package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/skbstore/skbstore/images"
	"github.com/skbstore/skbstore/kernels"
)

// coldRow is what a first run pays for one kernel before its first boot.
type coldRow struct {
	kernel     string
	fetch      time.Duration // download, verify, extract
	downloaded int64
	extracted  int64
	err        error
}

// coldCosts measures a first run's costs in throwaway caches, so the user's
// cache is neither used nor disturbed: fetching each kernel (package lists,
// download, verification, extraction) and building the base image (with Go's
// build cache as it is). A kernel that cannot be fetched (no network) gets its
// error in the table rather than ending the benchmark.
func coldCosts(ctx context.Context, names []string, init string) (rows []coldRow, image time.Duration, imageSize int64, err error) {
	tmp, err := os.MkdirTemp("", "vmtest-bench-cold-")
	if err != nil {
		return nil, 0, 0, err
	}
	defer os.RemoveAll(tmp)
	for _, name := range names {
		fmt.Fprintf(os.Stderr, "bench: cold fetch of kernel %s into an empty cache...\n", name)
		dir := filepath.Join(tmp, "k-"+name)
		c := &kernels.Cache{Dir: dir}
		start := time.Now()
		_, gerr := c.Get(ctx, name)
		r := coldRow{kernel: name, fetch: time.Since(start), err: gerr}
		if gerr == nil {
			r.downloaded = c.Stats().DownloadBytes
			r.extracted = treeSize(filepath.Join(dir, "kernels", "trees"))
		}
		rows = append(rows, r)
		os.RemoveAll(dir)
		if ctx.Err() != nil {
			return nil, 0, 0, ctx.Err()
		}
	}
	fmt.Fprintf(os.Stderr, "bench: building the base image into an empty cache...\n")
	start := time.Now()
	path, err := images.Base(ctx, images.BaseOptions{CacheDir: filepath.Join(tmp, "images"), Init: init})
	if err != nil {
		return nil, 0, 0, err
	}
	image = time.Since(start)
	if st, err := os.Stat(path); err == nil {
		imageSize = st.Size()
	}
	return rows, image, imageSize, nil
}

func treeSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

func coldTable(rows []coldRow, image time.Duration, imageSize int64, init string) string {
	var b strings.Builder
	b.WriteString("## Cold cache: what a first run pays before its first boot\n\n")
	b.WriteString("Each kernel fetched into an empty cache (package lists, download, verification, extraction); the base\n")
	fmt.Fprintf(&b, "image (init %s) built into an empty image cache, with Go's build cache as it was.\n\n", init)
	b.WriteString("| kernel | fetch + verify + extract | downloaded | extracted |\n|---|---:|---:|---:|\n")
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(&b, "| %s | failed: %s | | |\n", r.kernel, strings.ReplaceAll(r.err.Error(), "\n", " "))
			continue
		}
		fmt.Fprintf(&b, "| %s | %.1fs | %d MiB | %d MiB |\n", r.kernel, r.fetch.Seconds(), r.downloaded>>20, r.extracted>>20)
	}
	fmt.Fprintf(&b, "\nBase image build: %.1fs, %.1f MiB. Warm, both are reused: a cached kernel costs no network access,\n", image.Seconds(), float64(imageSize)/(1<<20))
	b.WriteString("the image one `go list` to check its sources did not change.\n")
	return b.String()
}
