// Package hostile is a guest test package that attacks the runner the way a
// test running as root in the guest could: it writes forged frames to the
// result port, floods it, prints without end, leaves huge artifacts and lies
// with its exit status. vmtest's own tests (hostile_test.go beside
// vmtest/run.go) boot it with one -attack at a time and check that nothing
// escaped to the host, that the verdict is a failure and that the message
// names the cause.
package hostile

import (
	"bytes"
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/skbstore/skbstore/vmtest/internal/ioport"
)

var attack = flag.String("attack", "", "what to do to the runner")

// resultPort is the agent's result port (vmtest/machine.go): ttyS1 (minor
// 65) on x86, a UART on PCI that comes up as ttyS0 (minor 64) on arm64.
var resultPort, resultPortMinor = func() (string, uint32) {
	if runtime.GOARCH == "arm64" {
		return "/dev/ttyS0", 64
	}
	return "/dev/ttyS1", 65
}()

// target is the host path the escape attack tries to create: $HOSTILE_TARGET,
// else one under /tmp.
var target = cmp.Or(os.Getenv("HOSTILE_TARGET"), "/tmp/vmtest-hostile-escaped")

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv("VMTEST_GUEST") != "1" {
		fmt.Println("hostile: runs only inside a vmtest guest")
		os.Exit(0)
	}
	code := m.Run()
	switch *attack {
	case "forge-pass":
		// The test failed; claim it passed and that the agent is done, then
		// announce a large payload that would swallow the agent's real
		// frames if a reader believed it.
		port := openPort()
		for _, f := range []struct{ typ, name, payload string }{
			{"exit", "hostile", "code\x000\x00error\x00\x00duration\x001\x00"},
			{"done", "-", ""},
		} {
			writeV1(port, f.typ, f.name, f.payload)
			writeV2(port, f.typ, f.name, 1000, f.payload)
		}
		fmt.Fprintf(port, "@VMT1 out hostile %d 00000000\n", 64<<20)
		fmt.Fprintf(port, "@VMT2 out hostile 1001 %d %s %s\n", 1<<20, bytes.Repeat([]byte("0"), 32), bytes.Repeat([]byte("0"), 32))
	case "exit0":
		// The testing package printed FAIL; exit 0 all the same.
		code = 0
	case "early-exit":
		// End the machine the way the agent does when it is done, before
		// it is: QEMU exits with the agent's exit value.
		if err := ioport.Write(0xf4, 0x55); err != nil {
			fmt.Println("hostile: early exit:", err)
		}
	}
	os.Exit(code)
}

// openPort opens the result port the way a root process can after the agent
// removed its device node: by making a new one.
func openPort() *os.File {
	const node = "/tmp/hostile-port"
	if err := unix.Mknod(node, unix.S_IFCHR|0o600, int(unix.Mkdev(4, resultPortMinor))); err != nil && !errors.Is(err, unix.EEXIST) {
		fmt.Println("hostile: mknod:", err)
		os.Exit(3)
	}
	f, err := os.OpenFile(node, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		fmt.Println("hostile: open result port:", err)
		os.Exit(3)
	}
	return f
}

// writeV1 writes a frame in the runner's first, unauthenticated format.
func writeV1(f *os.File, typ, name, payload string) {
	fmt.Fprintf(f, "@VMT1 %s %s %d %08x\n%s\n", typ, name, len(payload), crc32.ChecksumIEEE([]byte(payload)), payload)
}

// writeV2 writes a frame in the current format, tagged with a key of its own
// making: the boot's key is the agent's alone.
func writeV2(f *os.File, typ, name string, seq uint64, payload string) {
	key := []byte("a key the forger made up, 32 b.")
	fields := fmt.Sprintf("%s %s %d %d", typ, name, seq, len(payload))
	h := hmac.New(sha256.New, key)
	h.Write([]byte("h" + fields))
	ht := hex.EncodeToString(h.Sum(nil)[:16])
	h.Reset()
	var b [9]byte
	b[0] = 'p'
	for i := range 8 {
		b[1+i] = byte(seq >> (8 * i))
	}
	h.Write(b[:])
	h.Write([]byte(payload))
	fmt.Fprintf(f, "@VMT2 %s %s %s\n%s\n", fields, ht, hex.EncodeToString(h.Sum(nil)[:16]), payload)
}

// TestKeyAndPortHidden passes when what authenticates the agent is out of
// the tests' reach: the job (which holds the key) is gone and the result
// port has no device node.
func TestKeyAndPortHidden(t *testing.T) {
	for _, p := range []string{"/vmtest/job", resultPort} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is visible to tests (%v)", p, err)
		}
	}
}

// TestFailThenForge fails; TestMain then forges a passing exit.
func TestFailThenForge(t *testing.T) {
	if *attack != "forge-pass" {
		t.Skip("-attack forge-pass")
	}
	t.Error("this test fails; the frames written after it claim it passed")
}

// TestEscape writes frames whose names climb out of the results directory.
func TestEscape(t *testing.T) {
	if *attack != "escape" {
		t.Skip("-attack escape")
	}
	port := openPort()
	defer port.Close()
	up := "../../../../../../../../../../.." + target
	for _, v := range []func(typ, name, payload string){
		func(typ, name, payload string) { writeV1(port, typ, name, payload) },
		func(typ, name, payload string) { writeV2(port, typ, name, 3, payload) },
	} {
		v("out", up, "escaped\n")
		v("file", "hostile/"+up, "escaped\n")
		v("file", up, "escaped\n")
	}
}

// TestFloodNames writes frames with distinct names, each of which once made
// the host create a file and keep it open.
func TestFloodNames(t *testing.T) {
	if *attack != "flood-names" {
		t.Skip("-attack flood-names")
	}
	port := openPort()
	defer port.Close()
	var b bytes.Buffer
	for i := range 25000 {
		name := "n" + strconv.Itoa(i)
		fmt.Fprintf(&b, "@VMT1 out %s 1 %08x\nx\n", name, crc32.ChecksumIEEE([]byte("x")))
		if b.Len() > 64<<10 {
			port.Write(b.Bytes())
			b.Reset()
		}
	}
	port.Write(b.Bytes())
}

// TestBigOutput prints more than the runner's output cap allows.
func TestBigOutput(t *testing.T) {
	if *attack != "big-output" {
		t.Skip("-attack big-output")
	}
	line := bytes.Repeat([]byte("o"), 1023)
	line = append(line, '\n')
	for range 2048 { // 2 MiB
		os.Stdout.Write(line)
	}
}

// TestBigArtifact leaves a 1 GiB sparse file for the host, more than the
// guest's memory: an agent that read it whole would die with the test's PASS.
func TestBigArtifact(t *testing.T) {
	if *attack != "big-artifact" {
		t.Skip("-attack big-artifact")
	}
	dir := os.Getenv("VMTEST_ARTIFACTS")
	f, err := os.Create(filepath.Join(dir, "huge.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "small.txt"), []byte("kept\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFailsButExits0 fails; TestMain exits 0 anyway.
func TestFailsButExits0(t *testing.T) {
	if *attack != "exit0" {
		t.Skip("-attack exit0")
	}
	t.Error("this test fails and the binary exits 0")
}
