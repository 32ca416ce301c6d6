package proto

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestPythonClientFromDocs runs the Python client of docs/protocol.md,
// section 13, against the in-test server: the specification is enough to
// write a working client (HELLO with a received staging fd, PING, CRC-32C,
// OPEN with a RegionDesc whose kind says how to map the reserve).
func TestPythonClientFromDocs(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Skip("docs/protocol.md not beside the package:", err)
	}
	const fence = "```python\n"
	i := bytes.LastIndex(doc, []byte(fence))
	if i < 0 {
		t.Fatal("no python block in docs/protocol.md")
	}
	code := doc[i+len(fence):]
	code = code[:bytes.Index(code, []byte("```"))]
	if !strings.Contains(string(code), "recvmsg") {
		t.Fatal("the last python block is not the client")
	}
	s := newTestServer(t)
	cmd := exec.Command(py, "-c", string(code)+"\nprint('ok', version, staging_size, kind, hex(device), len(reserve), layers)\n")
	cmd.Env = append(os.Environ(), "FLASHMEMD_SOCKET="+s.path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python client: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "ok 1 1048576 0 0xffffffff 4096 [(0, 512)]" {
		t.Fatalf("python client printed %q", got)
	}
}
