package skbbench

import (
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/skbstore/skbstore/suites/internal/artifacts"
	"github.com/skbstore/skbstore/suites/internal/testenv"
)

// emulationNote heads every human-readable table.
const emulationNote = "Measured inside a vmtest guest, usually under QEMU software emulation (TCG): absolute numbers (packets/s, ns) mean little there and vary from run to run. Compare the ratios, which are measured in the same run with the configurations interleaved."

// mdReport collects the markdown sections the tests produce; TestMain
// writes them to bench/storage.md.
var mdReport struct {
	mu       sync.Mutex
	sections map[string]string
}

// addSection records the markdown of one test under its name.
func addSection(name, md string) {
	mdReport.mu.Lock()
	defer mdReport.mu.Unlock()
	if mdReport.sections == nil {
		mdReport.sections = map[string]string{}
	}
	mdReport.sections[name] = md
}

// TestMain runs the tests and then writes bench/storage.md if any test
// produced a table.
func TestMain(m *testing.M) {
	code := m.Run()
	mdReport.mu.Lock()
	var b strings.Builder
	if len(mdReport.sections) > 0 {
		b.WriteString("# skb-keyed storage: cost on " + testenv.KernelRelease() + "\n\n")
		b.WriteString(emulationNote + "\n")
		for _, name := range []string{"storage", "mapops"} {
			if s, ok := mdReport.sections[name]; ok {
				b.WriteString("\n" + s)
			}
		}
	}
	mdReport.mu.Unlock()
	if b.Len() > 0 {
		if _, err := artifacts.Write("bench/storage.md", []byte(b.String())); err != nil {
			os.Stderr.WriteString("skbbench: " + err.Error() + "\n")
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}
