package proto

import (
	"net/url"
	"time"
)

// JobPath is where the host puts the Job in the guest's initramfs.
const JobPath = "/vmtest/job.json"

// ArtifactsRoot is the guest directory whose files are shipped back to the host.
const ArtifactsRoot = "/vmtest/artifacts"

// Job tells the guest agent what to run. The host writes it as JSON to JobPath.
type Job struct {
	// Commands run one after the other.
	Commands []Command `json:"commands"`
	// Modules are module files to load before the first command, in load
	// order, as paths inside the guest.
	Modules []string `json:"modules,omitempty"`
	// Env is added to every command's environment.
	Env []string `json:"env,omitempty"`
	// ResultPort is the device of the result port, /dev/ttyS1 by default.
	ResultPort string `json:"result_port,omitempty"`
}

// Command is one program the guest agent runs.
type Command struct {
	// ID names the command in frames and artifacts; a token without spaces.
	ID   string   `json:"id"`
	Path string   `json:"path"`
	Args []string `json:"args,omitempty"`
	// Dir is the working directory; "/" when empty.
	Dir string `json:"dir,omitempty"`
}

// Hello is the payload of a TypeHello frame.
type Hello struct {
	Release string  `json:"release"` // uname -r
	Version string  `json:"version"` // uname -v
	Uptime  float64 `json:"uptime"`  // seconds since the guest kernel started
}

// Exit is the payload of a TypeExit frame.
type Exit struct {
	// Code is the exit status; -1 when the command could not start or was
	// killed by a signal.
	Code     int           `json:"code"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration"`
}

// EscapeName turns a relative file path into a frame name token.
func EscapeName(p string) string { return url.PathEscape(p) }

// UnescapeName reverses EscapeName.
func UnescapeName(n string) (string, error) { return url.PathUnescape(n) }
