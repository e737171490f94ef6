package kernels

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCompareDebVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"6.1.192-2", "6.1.170-1", 1},
		{"6.1.170-1", "6.1.170-1", 0},
		{"6.1.170-1", "6.1.170-2", -1},
		{"6.1.99-1", "6.1.100-1", -1},
		{"7.3~rc7-1~exp1", "7.3-1", -1},
		{"7.3~rc7-1~exp1", "7.3~rc6-1~exp1", 1},
		{"6.12.117-1~bpo12+1", "6.12.117-1", -1},
		{"6.12.118-1", "6.12.117-1~bpo12+1", 1},
		{"1:1.0-1", "2.0-1", 1},
		{"1.0", "1.0-0", 0},
		{"1.0a", "1.0", 1},
		{"1.0+b1", "1.0", 1},
		{"1.0.0", "1.0", 1},
		{"1.01", "1.1", 0},
		{"5.10.262-1", "5.10.223-1", 1},
	} {
		t.Run(tc.a+" vs "+tc.b, func(t *testing.T) {
			assert.Equal(t, tc.want, compareDebVersions(tc.a, tc.b))
			assert.Equal(t, -tc.want, compareDebVersions(tc.b, tc.a))
		})
	}
}

func TestImagePackageRE(t *testing.T) {
	for _, tc := range []struct {
		version, flavour, arch, pkg string
		match                       bool
	}{
		{"5.10", "cloud", "amd64", "linux-image-5.10.0-46-cloud-amd64-unsigned", true},
		{"5.10", "cloud", "amd64", "linux-image-5.10.0-46-cloud-amd64", true},
		{"5.10", "cloud", "amd64", "linux-image-5.10.0-46-cloud-amd64-dbg", false},
		{"6.1", "cloud", "amd64", "linux-image-6.1.0-56-cloud-amd64-unsigned", true},
		{"6.1", "cloud", "amd64", "linux-image-6.12.118+deb13-cloud-amd64-unsigned", false},
		{"6.1", "cloud", "amd64", "linux-image-6.1.0-56-amd64-unsigned", false},
		{"6.1", "generic", "amd64", "linux-image-6.1.0-56-amd64-unsigned", true},
		{"6.1", "generic", "amd64", "linux-image-6.1.0-56-cloud-amd64-unsigned", false},
		{"6.1", "generic", "amd64", "linux-image-6.1.0-56-rt-amd64-unsigned", false},
		{"6.1", "rt", "amd64", "linux-image-6.1.0-56-rt-amd64-unsigned", true},
		{"6.12", "cloud", "amd64", "linux-image-6.12.118+deb13-cloud-amd64-unsigned", true},
		{"6.12", "cloud", "amd64", "linux-image-6.12.115+deb13.1-cloud-amd64", true},
		{"6.12", "cloud", "amd64", "linux-image-6.12.117+deb12-cloud-amd64-unsigned", true},
		{"7.2", "cloud", "amd64", "linux-image-7.2.13+deb14-cloud-amd64", true},
		{"7.2", "generic", "amd64", "linux-image-7.2.13+deb14-amd64", true},
		{"7.3", "cloud", "amd64", "linux-image-7.3-cloud-amd64", true},
		{"7.3", "generic", "amd64", "linux-image-7.3-amd64", true},
		{"7.3", "generic", "amd64", "linux-image-7.3-cloud-amd64", false},
		{"7.3", "cloud", "amd64", "linux-image-cloud-amd64", false},
		{"6.1", "cloud", "arm64", "linux-image-6.1.0-56-cloud-arm64-unsigned", true},
		{"6.1", "cloud", "arm64", "linux-image-6.1.0-56-cloud-arm64", true},
		{"6.1", "cloud", "arm64", "linux-image-6.1.0-56-cloud-amd64", false},
		{"6.1", "cloud", "amd64", "linux-image-6.1.0-56-cloud-arm64", false},
		{"6.1", "generic", "arm64", "linux-image-6.1.0-56-arm64", true},
		{"6.1", "generic", "arm64", "linux-image-6.1.0-56-cloud-arm64", false},
		{"6.1", "generic", "arm64", "linux-image-6.1.0-56-arm64-16k", false},
		{"6.1", "rt", "arm64", "linux-image-6.1.0-56-rt-arm64", true},
		{"6.12", "cloud", "arm64", "linux-image-6.12.117+deb13-cloud-arm64", true},
		{"7.2", "cloud", "arm64", "linux-image-7.2.13+deb14-cloud-arm64", true},
		{"5.10", "cloud", "arm64", "linux-image-5.10.0-32-cloud-arm64-dbg", false},
	} {
		t.Run(tc.flavour+"/"+tc.arch+"/"+tc.pkg, func(t *testing.T) {
			assert.Equal(t, tc.match, imagePackageRE(tc.version, tc.flavour, tc.arch).MatchString(tc.pkg))
		})
	}
}

func TestRankImages(t *testing.T) {
	got := rankImages([]debPackage{
		{Package: "linux-image-6.1.0-55-cloud-amd64", Version: "6.1.190-1"},
		{Package: "linux-image-6.1.0-56-cloud-amd64", Version: "6.1.192-2"},
		{Package: "linux-image-6.1.0-56-cloud-amd64-unsigned", Version: "6.1.192-2"},
		{Package: "linux-image-6.1.0-9-cloud-amd64-unsigned", Version: "6.1.27-1"},
	})
	var names []string
	for _, p := range got {
		names = append(names, p.Package)
	}
	assert.Equal(t, []string{
		"linux-image-6.1.0-56-cloud-amd64-unsigned",
		"linux-image-6.1.0-56-cloud-amd64",
		"linux-image-6.1.0-55-cloud-amd64",
		"linux-image-6.1.0-9-cloud-amd64-unsigned",
	}, names)
}

func TestSplitParts(t *testing.T) {
	parts, err := splitParts(debPackage{Package: "linux-image-7.3-cloud-amd64", Version: "7.3~rc7-1~exp1",
		Depends: "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.3-cloud-amd64 (= 7.3~rc7-1~exp1), " +
			"linux-binary-7.3-cloud-amd64 (= 7.3~rc7-1~exp1), linux-modules-7.3-cloud-amd64 (= 7.3~rc7-1~exp1)"})
	require.NoError(t, err)
	assert.Equal(t, map[string]string{
		"linux-base-7.3-cloud-amd64":    "7.3~rc7-1~exp1",
		"linux-binary-7.3-cloud-amd64":  "7.3~rc7-1~exp1",
		"linux-modules-7.3-cloud-amd64": "7.3~rc7-1~exp1",
	}, parts)

	parts, err = splitParts(debPackage{Package: "linux-image-6.1.0-56-cloud-amd64-unsigned",
		Depends: "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool"})
	require.NoError(t, err)
	assert.Empty(t, parts)

	_, err = splitParts(debPackage{Package: "x", Depends: "linux-binary-7.3-cloud-amd64 (>= 7.3)"})
	assert.ErrorContains(t, err, "not pinned")
}

func TestParseStanzas(t *testing.T) {
	out := `Package: linux-image-7.2.13+deb14-cloud-amd64
Source: linux-signed-amd64 (7.2.13+1)
Version: 7.2.13-1
Installed-Size: 15
Depends: linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)
Description: Linux 7.2 for x86-64 cloud
 The Linux kernel 7.2 and modules
 .
 more: text
Filename: pool/main/l/linux-signed-amd64/linux-image-7.2.13+deb14-cloud-amd64_7.2.13-1_amd64.deb
Size: 1916
SHA256: 100EC8EFC7E14271719AEE6E50424AD2F92C5573723BB33134C391C4F4FE5B7B

Package: linux-binary-7.2.13+deb14-cloud-amd64
Version: 7.2.13-1
Filename: pool/main/l/linux-signed-amd64/linux-binary-7.2.13+deb14-cloud-amd64_7.2.13-1_amd64.deb
Size: 13717736
SHA256: 03e41f1c34c16583462f029e81944a85ebcdb78098c258dedfa1cfdd680a27f8

`
	pkgs, err := parseStanzas(out)
	require.NoError(t, err)
	require.Len(t, pkgs, 2)
	assert.Equal(t, debPackage{
		Package:  "linux-image-7.2.13+deb14-cloud-amd64",
		Version:  "7.2.13-1",
		Depends:  "linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)",
		Filename: "pool/main/l/linux-signed-amd64/linux-image-7.2.13+deb14-cloud-amd64_7.2.13-1_amd64.deb",
		Size:     1916,
		SHA256:   "100ec8efc7e14271719aee6e50424ad2f92c5573723bb33134c391c4f4fe5b7b",
	}, pkgs[0])
	assert.Equal(t, int64(13717736), pkgs[1].Size)

	_, err = parseStanzas("Package: x\nVersion: 1\nSize: 10\n")
	assert.ErrorContains(t, err, "no SHA256")
}
