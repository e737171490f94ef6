package kernels

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/klauspost/compress/zstd"
)

// The OCI source serves versions Debian lacks from a repository of kernel
// images laid out like cilium/ebpf's CI kernels (ghcr.io/cilium/ci-kernels):
// one image per kernel version tag, holding boot/vmlinuz and maybe
// (usr/)lib/modules/<release>/; a tag may be a multi-platform index, of
// which the image for linux/<arch> is taken. Trees are keyed by the image's
// manifest digest and layers are stored by their digest.

// ociLayerRef marks the PackageRefs of an OCI kernel that are layers; the
// first PackageRef is the image itself (Name: reference, Version: digest).
const ociLayerRef = "layer"

func (c *Cache) blobPath(hexDigest string) string {
	return filepath.Join(c.kernelsDir(), "blobs", "sha256", hexDigest)
}

// remoteOptions are the registry client's options; of a multi-platform
// index the image for linux/arch is taken.
func (c *Cache) remoteOptions(ctx context.Context, arch string) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: arch}),
	}
}

func (c *Cache) getOCI(ctx context.Context, s spec) (*Kernel, error) {
	repo, err := name.NewRepository(strings.TrimRight(c.OCIRepo, "/"))
	if err != nil {
		return nil, fmt.Errorf("OCI repository %q: %w", c.OCIRepo, err)
	}
	h := sha256.Sum256([]byte(repo.String()))
	sourceID := hex.EncodeToString(h[:8])
	var ref name.Reference = repo.Tag(s.tag)
	canonical := "oci-" + s.tag + archSuffix(s.arch)
	if s.digest != "" {
		// A pinned image never changes: its resolution never expires.
		ref, canonical = repo.Digest(s.digest), "oci-"+strings.ReplaceAll(s.digest, ":", "-")+archSuffix(s.arch)
		if res, ok := c.readResolution(canonical, sourceID); ok {
			if k, err := c.openTree(s, res); err == nil {
				return k, nil
			}
		}
	}
	start := time.Now()
	if res, ok := c.readResolution(canonical, sourceID); ok && !c.Refresh && (c.Offline || time.Since(res.ResolvedAt) < c.maxAge()) {
		if k, err := c.openTree(s, res); err == nil {
			return k, nil
		}
	}
	res, err := c.resolveOCI(ctx, ref, s.arch, canonical, sourceID, start)
	if err != nil {
		return nil, err
	}
	return c.fetchOCI(ctx, s, ref, res)
}

// ociLookupTimeout bounds the look-up of a tag: a registry that cannot be
// reached must not hold a run for minutes.
const ociLookupTimeout = 30 * time.Second

// resolveOCI finds the digest of the image for arch a reference points to
// now.
func (c *Cache) resolveOCI(ctx context.Context, ref name.Reference, arch, canonical, sourceID string, start time.Time) (resolution, error) {
	unlock, err := lockFile(ctx, c.lockPath(canonical), "to resolve "+ref.String(), c.progress())
	if err != nil {
		return resolution{}, err
	}
	defer unlock()
	old, haveOld := c.readResolution(canonical, sourceID)
	if haveOld && (old.ResolvedAt.After(start) || c.Offline || (!c.Refresh && time.Since(old.ResolvedAt) < c.maxAge())) {
		return old, nil
	}
	if c.Offline {
		return resolution{}, fmt.Errorf("offline, and %s was never fetched", ref)
	}
	lctx, cancel := context.WithTimeout(ctx, ociLookupTimeout)
	defer cancel()
	img, err := remote.Image(ref, c.remoteOptions(lctx, arch)...)
	if err == nil {
		var res resolution
		if res, err = ociResolution(img, ref, canonical, sourceID); err == nil {
			if haveOld && old.Key != res.Key {
				c.logf("%s moved: %s -> %s", ref, old.Packages[0].Version, res.Packages[0].Version)
			}
			if err := c.writeResolution(res); err != nil {
				return resolution{}, fmt.Errorf("record resolution: %w", err)
			}
			return res, nil
		}
	}
	if haveOld && ctx.Err() == nil {
		c.logf("warning: could not look up %s (%v); using the image of %s", ref, err, old.ResolvedAt.Format(time.RFC3339))
		return old, nil
	}
	return resolution{}, fmt.Errorf("look up %s: %w", ref, err)
}

func ociResolution(img v1.Image, ref name.Reference, canonical, sourceID string) (resolution, error) {
	digest, err := img.Digest()
	if err != nil {
		return resolution{}, err
	}
	manifest, err := img.RawManifest()
	if err != nil {
		return resolution{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return resolution{}, err
	}
	if len(layers) == 0 {
		return resolution{}, errors.New("image has no layers")
	}
	res := resolution{Format: metaFormat, Name: canonical, SourceID: sourceID, ResolvedAt: time.Now(),
		Key:      "oci-" + digest.Hex,
		Packages: []PackageRef{{Name: ref.String(), Version: digest.String(), SHA256: digest.Hex, Size: int64(len(manifest))}}}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return resolution{}, err
		}
		size, err := l.Size()
		if err != nil {
			return resolution{}, err
		}
		if d.Algorithm != "sha256" {
			return resolution{}, fmt.Errorf("layer %s: only sha256 digests are supported", d)
		}
		res.Packages = append(res.Packages, PackageRef{Name: ociLayerRef, Version: d.String(), SHA256: d.Hex, Size: size})
	}
	return res, nil
}

// fetchOCI makes sure the tree of an image exists, downloading missing
// layers and unpacking them.
func (c *Cache) fetchOCI(ctx context.Context, s spec, ref name.Reference, res resolution) (*Kernel, error) {
	k, unlock, err := c.lockForFetch(ctx, s, res, ref.String())
	if k != nil || err != nil {
		return k, err
	}
	defer unlock()
	start := time.Now()
	for _, l := range res.Packages[1:] {
		if err := c.ensureBlob(ctx, ref.Context(), l); err != nil {
			return nil, err
		}
	}
	stage, err := os.MkdirTemp(c.tmpDir(), res.Key+".")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	c.logf("extracting %s (%s)", ref, res.Packages[0].Version)
	raw := filepath.Join(stage, "raw")
	for _, l := range res.Packages[1:] {
		if err := untarLayer(c.blobPath(l.SHA256), raw); err != nil {
			return nil, fmt.Errorf("unpack layer %s: %w", l.Version, err)
		}
	}
	release, arch, err := arrangeTree(stage, raw)
	if err != nil {
		return nil, err
	}
	if arch != s.arch {
		return nil, fmt.Errorf("%s (%s) holds an %s kernel, not %s: the repository has no linux/%s image of it",
			ref, res.Packages[0].Version, arch, s.arch, s.arch)
	}
	depmod := ""
	modDir := filepath.Join(stage, treeModulesRel(release))
	if _, err := os.Stat(modDir); err == nil {
		depmod = "image"
		if _, err := os.Stat(filepath.Join(modDir, "modules.dep")); err != nil {
			if depmod, err = makeModulesDep(ctx, stage, release, c.depmodMode, c.progress()); err != nil {
				return nil, fmt.Errorf("make modules.dep for %s: %w", release, err)
			}
		}
	}
	m, err := describeTree(stage, release)
	if err != nil {
		return nil, err
	}
	m.Name, m.Key, m.Source, m.Packages, m.Depmod, m.Arch = tagOf(ref)+archSuffix(arch), res.Key, SourceOCI, res.Packages, depmod, arch
	if err := writeMarker(stage, m); err != nil {
		return nil, err
	}
	if err := c.installTree(stage, res.Key); err != nil {
		return nil, fmt.Errorf("install kernel tree: %w", err)
	}
	c.count(func(st *Stats) { st.Extracts++ })
	c.logf("extracted %s in %.1fs (%s on disk)", release, time.Since(start).Seconds(), mib(m.DiskBytes))
	return kernelFromTree(s.name, c.treeDir(res.Key), m), nil
}

// tagOf is the tag of a reference; a digest reference's is its digest.
func tagOf(ref name.Reference) string {
	if t, ok := ref.(name.Tag); ok {
		return t.TagStr()
	}
	return ref.Identifier()
}

// ensureBlob downloads a layer into the blob store unless an intact copy is
// there, checking its size and digest before it is stored.
func (c *Cache) ensureBlob(ctx context.Context, repo name.Repository, l PackageRef) error {
	dst := c.blobPath(l.SHA256)
	err := verifyDeb(dst, l)
	if err == nil {
		return nil
	}
	if _, statErr := os.Stat(dst); statErr == nil {
		c.logf("cached layer %s is corrupt (%v); downloading it again", l.Version, err)
		os.Remove(dst)
	}
	if c.Offline {
		return fmt.Errorf("offline, and layer %s is not cached", l.Version)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	c.logf("downloading layer %s (%s)", l.Version, mib(l.Size))
	t := time.Now()
	layer, err := remote.Layer(repo.Digest(l.Version), c.remoteOptions(ctx, DefaultArch)...)
	if err != nil {
		return fmt.Errorf("layer %s: %w", l.Version, err)
	}
	rc, err := layer.Compressed()
	if err != nil {
		return fmt.Errorf("download layer %s: %w", l.Version, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(c.tmpDir(), "blob.")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	hash := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, hash), io.LimitReader(rc, l.Size+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("download layer %s: %w", l.Version, err)
	}
	if sum := hex.EncodeToString(hash.Sum(nil)); n != l.Size || sum != l.SHA256 {
		return fmt.Errorf("downloaded layer %s has %d bytes and SHA256 %s, want %d bytes", l.Version, n, sum, l.Size)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return err
	}
	c.count(func(st *Stats) { st.Downloads++; st.DownloadBytes += n })
	c.logf("downloaded %s in %.1fs", mib(n), time.Since(t).Seconds())
	return nil
}

// untarLayer unpacks a (gzip, zstd or uncompressed) tar layer into dir.
// Only directories and regular files are written, never symlinks, so no
// entry can reach outside dir; hard links are copied. Whiteouts delete.
func untarLayer(blob, dir string) error {
	f, err := os.Open(blob)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	magic, _ := br.Peek(4)
	var r io.Reader = br
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		gr, err := gzip.NewReader(br)
		if err != nil {
			return err
		}
		r = gr
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return err
		}
		defer zr.Close()
		r = zr
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		if rel == "" {
			continue
		}
		target := filepath.Join(dir, filepath.FromSlash(rel))
		base := path.Base(rel)
		if strings.HasPrefix(base, ".wh.") {
			if base != ".wh..wh..opq" {
				os.RemoveAll(filepath.Join(filepath.Dir(target), strings.TrimPrefix(base, ".wh.")))
			}
			continue
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := writeTarFile(target, tr, hdr.FileInfo().Mode().Perm()); err != nil {
				return err
			}
		case tar.TypeLink:
			src := filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/")))
			in, err := os.Open(src)
			if err != nil {
				return fmt.Errorf("hard link %s: %w", rel, err)
			}
			err = writeTarFile(target, in, 0o644)
			in.Close()
			if err != nil {
				return err
			}
		}
		// Symlinks (lib -> usr/lib, modules' build/source links) are not
		// needed: arrangeTree looks in lib/ and usr/lib/ itself.
	}
}

func writeTarFile(target string, r io.Reader, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	os.RemoveAll(target)
	out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm|0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
