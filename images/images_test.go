package images

import (
	"bytes"
	"context"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/cpio"
)

// readArchives reads every cpio archive concatenated in b, the way the
// kernel's initramfs unpacker does, and returns the regular files it holds
// (later archives override earlier ones).
func readArchives(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	off := 0
	for off < len(b) {
		// Archives are 4-byte aligned; zero padding may separate them.
		for off < len(b) && b[off] == 0 {
			off++
		}
		if off >= len(b) {
			break
		}
		cr := &countingReaderAt{r: bytes.NewReader(b[off:])}
		rr := cpio.Newc.Reader(cr)
		for {
			rec, err := rr.ReadRecord()
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
			if m := rec.Mode & cpio.S_IFMT; m == cpio.S_IFREG || m == cpio.S_IFLNK {
				data, err := io.ReadAll(io.NewSectionReader(rec.ReaderAt, 0, int64(rec.FileSize)))
				require.NoError(t, err)
				if m == cpio.S_IFLNK {
					data = append([]byte("-> "), data...)
				}
				files[rec.Name] = data
			}
		}
		require.Positive(t, cr.max, "empty archive at %d", off)
		off += int(cr.max)
	}
	return files
}

type countingReaderAt struct {
	r   *bytes.Reader
	max int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	if end := off + int64(n); end > c.max {
		c.max = end
	}
	return n, err
}

func TestWriteAppendsOverlay(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.cpio")
	// A base whose length is not a multiple of 4 checks the padding.
	var bb bytes.Buffer
	w := cpio.NewDedupWriter(cpio.Newc.Writer(&bb))
	require.NoError(t, cpio.WriteRecordsAndDirs(w, []cpio.Record{cpio.StaticFile("init", "base-init", 0o755)}))
	require.NoError(t, cpio.WriteTrailer(w))
	require.NoError(t, os.WriteFile(base, append(bb.Bytes(), 0), 0o644))

	host := filepath.Join(dir, "prog")
	require.NoError(t, os.WriteFile(host, []byte("#!binary"), 0o755))
	out := filepath.Join(dir, "image.cpio")
	require.NoError(t, Write(out, base, []File{
		{Guest: "/vmtest/job.json", Data: []byte(`{"commands":[]}`)},
		{Guest: "/vmtest/bin/prog", Host: host},
		{Guest: "/lib/modules/6.1.0/kernel/net/veth.ko", Data: []byte("ko")},
	}))
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	files := readArchives(t, b)
	assert.Equal(t, "base-init", string(files["init"]))
	assert.Equal(t, `{"commands":[]}`, string(files["vmtest/job.json"]))
	assert.Equal(t, "#!binary", string(files["vmtest/bin/prog"]))
	assert.Equal(t, "ko", string(files["lib/modules/6.1.0/kernel/net/veth.ko"]))
}

func TestWriteRejectsBadPaths(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.cpio")
	require.NoError(t, os.WriteFile(base, nil, 0o644))
	for _, p := range []string{"", "/", "../etc/passwd"} {
		err := Write(filepath.Join(dir, "x.cpio"), base, []File{{Guest: p, Data: []byte("x")}})
		assert.Error(t, err, "path %q", p)
	}
	assert.Error(t, Write(filepath.Join(dir, "y.cpio"), base, []File{{Guest: "/a", Host: "/nonexistent"}}))
	assert.NoFileExists(t, filepath.Join(dir, "y.cpio"), "a failed write leaves no half image")
}

// TestTreeFollowsLinks lays out a module the way cilium/ebpf's is: a
// testdata file that is a link, a package reading ../testdata, a link to a
// directory and one back up (a loop), a dangling link and a .git directory.
func TestTreeFollowsLinks(t *testing.T) {
	root := t.TempDir()
	mk := func(p, content string) {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, p), []byte(content), 0o644))
	}
	mk("go.mod", "module x\n")
	mk("testdata/real.elf", "ELF")
	mk("pkg/sub/x_test.go", "package sub")
	mk(".git/objects/big", "not for the guest")
	mk("vmtest-results/run/console.log", "not for the guest")
	elsewhere := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(elsewhere, "shared.txt"), []byte("shared"), 0o644))
	require.NoError(t, os.Symlink("real.elf", filepath.Join(root, "testdata", "loader-el.elf")))
	require.NoError(t, os.Symlink(elsewhere, filepath.Join(root, "pkg", "data")))
	require.NoError(t, os.Symlink("..", filepath.Join(root, "pkg", "up")))
	require.NoError(t, os.Symlink("/nonexistent", filepath.Join(root, "dangling")))

	files, size, err := Tree(root, TreeOptions{SkipDirs: []string{".git", "vmtest-results"}})
	require.NoError(t, err)
	got := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f.Host)
		require.NoError(t, err)
		rel, err := filepath.Rel(root, f.Guest)
		require.NoError(t, err)
		got[rel] = string(b)
	}
	assert.Equal(t, map[string]string{
		"go.mod":                 "module x\n",
		"testdata/real.elf":      "ELF",
		"testdata/loader-el.elf": "ELF",
		"pkg/sub/x_test.go":      "package sub",
		"pkg/data/shared.txt":    "shared",
	}, got)
	assert.Equal(t, int64(len("module x\n")+3+3+len("package sub")+len("shared")), size)

	_, _, err = Tree(root, TreeOptions{SkipDirs: []string{".git", "vmtest-results"}, MaxBytes: 10})
	assert.ErrorIs(t, err, ErrTooBig)

	one, size, err := Tree(filepath.Join(root, "testdata", "loader-el.elf"), TreeOptions{})
	require.NoError(t, err)
	assert.Equal(t, []File{{Guest: filepath.Join(root, "testdata", "loader-el.elf"), Host: filepath.Join(root, "testdata", "loader-el.elf"), Mode: 0o644}}, one)
	assert.Equal(t, int64(3), size)
}

// TestBaseIsCached builds the real base image with u-root and checks that a
// second call reuses it.
func TestBaseIsCached(t *testing.T) {
	if testing.Short() {
		t.Skip("builds u-root's init and the guest agent")
	}
	cache := t.TempDir()
	ctx := context.Background()
	var progress bytes.Buffer
	p1, err := Base(ctx, BaseOptions{CacheDir: cache, Progress: &progress})
	require.NoError(t, err)
	assert.Contains(t, progress.String(), "building guest image")
	b, err := os.ReadFile(p1)
	require.NoError(t, err)
	files := readArchives(t, b)
	names := slices.Sorted(maps.Keys(files))
	assert.Contains(t, names, "bin/vmtest-guest")
	assert.NotContains(t, names, "bin/init", "the default image needs no u-root init")
	assert.Equal(t, "-> bin/vmtest-guest", string(files["init"]), "the agent is /init")

	st1, err := os.Stat(p1)
	require.NoError(t, err)
	progress.Reset()
	start := time.Now()
	p2, err := Base(ctx, BaseOptions{CacheDir: cache, Progress: &progress})
	require.NoError(t, err)
	t.Logf("cached lookup took %v", time.Since(start))
	assert.Equal(t, p1, p2)
	assert.Empty(t, progress.String(), "second call must not rebuild")
	st2, err := os.Stat(p2)
	require.NoError(t, err)
	assert.True(t, os.SameFile(st1, st2), "the same file, not a rebuilt one")
	assert.False(t, st2.ModTime().Before(st1.ModTime()), "a use marks the image as used")
}

// cancelOn cancels when a progress line contains what.
type cancelOn struct {
	what   string
	cancel context.CancelFunc
	at     time.Time
}

func (c *cancelOn) Write(p []byte) (int, error) {
	if c.at.IsZero() && bytes.Contains(p, []byte(c.what)) {
		c.at = time.Now()
		c.cancel()
	}
	return len(p), nil
}

// TestBaseBuildCancels: Ctrl-C while the base image builds returns at once,
// and no half-built image lands in the cache.
func TestBaseBuildCancels(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the guest agent")
	}
	cache := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	progress := &cancelOn{what: "building guest image", cancel: cancel}
	_, err := Base(ctx, BaseOptions{CacheDir: cache, Progress: progress})
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, progress.at.IsZero(), "the build started")
	assert.Less(t, time.Since(progress.at), 2*time.Second, "returned soon after the cancel")
	// The build goes on in the background and cleans up after itself.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		left, _ := filepath.Glob(filepath.Join(cache, "*"))
		if len(left) == 0 || time.Now().After(deadline) {
			assert.Empty(t, left, "nothing left in the cache")
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestBaseWithUsersGOFLAGS builds the base image with a user's
// GOFLAGS=-mod=mod: this checkout is a workspace, where go refuses that flag,
// so the agent's build must set -mod=readonly itself; outside a workspace,
// or with a -mod a workspace allows, the user's GOFLAGS stay as they are.
func TestBaseWithUsersGOFLAGS(t *testing.T) {
	src, err := SourceDir(context.Background(), "")
	require.NoError(t, err)
	plain := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(plain, "go.mod"), []byte("module example.com/plain\n\ngo 1.22\n"), 0o644))
	for _, tc := range []struct {
		goflags, dir string
		want         golang.ModBehavior
	}{
		{"-mod=mod", src, golang.ModReadonly},
		{"-trimpath -mod=mod", src, golang.ModReadonly},
		{"-mod=readonly", src, golang.ModNone},
		{"-mod=vendor", src, golang.ModNone},
		{"-trimpath", src, golang.ModNone},
		{"-mod=mod", plain, golang.ModNone},
	} {
		t.Setenv("GOFLAGS", tc.goflags)
		if tc.dir == plain {
			t.Setenv("GOWORK", "")
		}
		assert.Equal(t, tc.want, modOverride(context.Background(), tc.dir), "GOFLAGS=%q in %s", tc.goflags, tc.dir)
	}
	if testing.Short() {
		t.Skip("builds the guest agent")
	}
	if modOverride(context.Background(), src) == golang.ModNone {
		t.Skip("the checkout is not a workspace")
	}
	t.Setenv("GOFLAGS", "-mod=mod")
	_, err = Base(context.Background(), BaseOptions{CacheDir: t.TempDir(), Commands: []string{}})
	require.NoError(t, err)
}
