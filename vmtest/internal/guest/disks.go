//go:build linux

package guest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/vmtest/internal/proto"
)

// diskWait bounds how long the agent waits for the drives the host attached
// to appear: NVMe namespaces are found asynchronously, some tens of
// milliseconds into user space under emulation.
const diskWait = 20 * time.Second

// mountDisks mounts the job's disks and binds their trees. A disk that does
// not mount is a fault: the tests would fail later, far from the cause.
//
// Each disk is set up as soon as it appears, while the others are still
// being found or mounted (under emulation the guest's one host thread
// fills the waits for the disks with the other disks' work), unless a
// disk's mount point or binds lie at or below another's: then they go one
// after another, in the job's order, as on a host's fstab. Nothing is
// mounted before mounted is closed (the guest's own file systems are).
func (a *agent) mountDisks(disks []proto.Disk, mounted <-chan struct{}) {
	if len(disks) == 0 {
		return
	}
	ready := make(map[string]chan string, len(disks))
	for _, d := range disks {
		ready[d.Label] = make(chan string, 1)
	}
	go func() {
		err := findDisks(disks, diskWait, func(label, dev string) {
			ready[label] <- dev
		})
		if err != nil {
			a.faultf("%v", err)
		}
		for _, c := range ready {
			close(c) // a disk not found gets ""
		}
	}()
	setUp := func(d proto.Disk) {
		dev := <-ready[d.Label]
		if dev == "" {
			return // reported by findDisks
		}
		<-mounted
		err := mountDisk(dev, d)
		if err == nil {
			err = bind(d)
		}
		if err != nil {
			a.faultf("disk %s: %v", d.Label, err)
			return
		}
		if strings.HasPrefix(d.Dir, "/lib/modules/") {
			if err := serveModprobe(); err != nil {
				a.faultf("modprobe for the kernel: %v", err)
			}
			if err := staticNodes(filepath.Join(d.Dir, "modules.devname"), "/dev"); err != nil {
				a.faultf("device nodes of modules: %v", err)
			}
		}
	}
	if overlapping(disks) {
		for _, d := range disks {
			setUp(d)
		}
		return
	}
	var wg sync.WaitGroup
	for _, d := range disks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			setUp(d)
		}()
	}
	wg.Wait()
}

// overlapping says whether a path one disk mounts or binds lies at or below
// one of another disk.
func overlapping(disks []proto.Disk) bool {
	paths := func(d proto.Disk) []string { return append([]string{d.Dir}, d.Binds...) }
	for i, d := range disks {
		for _, e := range disks[i+1:] {
			for _, p := range paths(d) {
				for _, q := range paths(e) {
					p, q := filepath.Clean(p), filepath.Clean(q)
					if p == q || strings.HasPrefix(p, q+"/") || strings.HasPrefix(q, p+"/") || p == "/" || q == "/" {
						return true
					}
				}
			}
		}
	}
	return false
}

func mountDisk(dev string, d proto.Disk) error {
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return err
	}
	flags := uintptr(unix.MS_NOATIME)
	if d.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(dev, d.Dir, "ext4", flags, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", dev, d.Dir, err)
	}
	return nil
}

// bind binds the trees of d, mounted, at their paths.
func bind(d proto.Disk) error {
	for _, p := range d.Binds {
		src := filepath.Join(d.Dir, p)
		st, err := os.Stat(src)
		if err != nil {
			return fmt.Errorf("bind %s: %w", p, err)
		}
		// The mount point: a directory, or an empty file for a file.
		if st.IsDir() {
			err = os.MkdirAll(p, 0o755)
		} else if err = os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(p, os.O_CREATE|os.O_RDONLY, 0o644); err == nil {
				f.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("bind %s: %w", p, err)
		}
		if err := unix.Mount(src, p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", p, err)
		}
	}
	return nil
}

// findDisks finds the block device of each disk by its label, waiting up
// to wait for them to appear, and calls found once for each as soon as it
// is there.
func findDisks(disks []proto.Disk, wait time.Duration, found func(label, dev string)) error {
	want := map[string]bool{}
	for _, d := range disks {
		want[d.Label] = true
	}
	seen := map[string]bool{} // devices read already
	ok := pollNVMe(wait, func(devs []string) bool {
		for _, dev := range devs {
			if seen[dev] {
				continue
			}
			l, err := ext4Label(dev)
			if err != nil && !errors.Is(err, errNotExt4) {
				continue // not readable yet
			}
			seen[dev] = true // an ext4 disk, or the spool
			if err == nil && want[l] {
				delete(want, l)
				found(l, dev)
			}
		}
		return len(want) == 0
	})
	if !ok {
		var missing []string
		for _, d := range disks {
			if want[d.Label] {
				missing = append(missing, d.Label)
			}
		}
		return fmt.Errorf("disks %s did not appear within %s (the kernel found: %s)", strings.Join(missing, ", "), wait, blockDevices())
	}
	return nil
}

// pollNVMe calls done with the NVMe block devices (/dev/nvme...) until it
// returns true or wait has passed, and says which: NVMe namespaces are found
// asynchronously, some tens of milliseconds into user space under
// emulation.
func pollNVMe(wait time.Duration, done func(devs []string) bool) bool {
	deadline := time.Now().Add(wait)
	for {
		var devs []string
		ents, _ := os.ReadDir("/sys/block")
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "nvme") {
				devs = append(devs, "/dev/"+e.Name())
			}
		}
		if done(devs) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

var errNotExt4 = errors.New("not ext4")

// ext4Label reads the volume label of the ext4 file system on dev.
func ext4Label(dev string) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", err
	}
	defer f.Close()
	// The superblock is at 1024; its magic at 0x38, the label at 0x78.
	sb := make([]byte, 0x88)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return "", err
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xef53 {
		return "", fmt.Errorf("%s: %w", dev, errNotExt4)
	}
	label, _, _ := bytes.Cut(sb[0x78:0x88], []byte{0})
	return string(label), nil
}

func blockDevices() string {
	ents, _ := os.ReadDir("/sys/block")
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) == 0 {
		return "no block device"
	}
	return strings.Join(names, ", ")
}

// parseDevnum parses a device of modules.devname, "c10:200" or "b7:0"
// (by hand: fmt's scanner costs this boot path its code translation).
func parseDevnum(s string) (kind byte, major, minor uint32, ok bool) {
	if len(s) < 4 || (s[0] != 'c' && s[0] != 'b') {
		return 0, 0, 0, false
	}
	maj, min, found := strings.Cut(s[1:], ":")
	a, err1 := strconv.ParseUint(maj, 10, 32)
	b, err2 := strconv.ParseUint(min, 10, 32)
	if !found || err1 != nil || err2 != nil {
		return 0, 0, 0, false
	}
	return s[0], uint32(a), uint32(b), true
}

// staticNodes makes the device nodes modules.devname lists (/dev/net/tun,
// /dev/fuse, ...), as `kmod static-nodes` does at a host's boot: opening
// one makes the kernel ask modprobe for its module (char-major-10-200),
// which a test relies on when it opens /dev/net/tun without loading tun.
// Nodes that exist are left alone.
func staticNodes(devname, dev string) error {
	b, err := os.ReadFile(devname)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || strings.HasPrefix(f[0], "#") {
			continue
		}
		kind, major, minor, ok := parseDevnum(f[2])
		if !ok {
			continue
		}
		// The name is the kernel's, below /dev; nothing climbs out.
		path := filepath.Join(dev, filepath.Clean("/"+f[1]))
		mode := uint32(unix.S_IFCHR)
		if kind == 'b' {
			mode = unix.S_IFBLK
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := unix.Mknod(path, mode|0o600, int(unix.Mkdev(major, minor))); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mknod %s: %w", path, err)
		}
	}
	return nil
}
