package proto_test

import (
	"bytes"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/flashmemory/flashmemory/proto"
)

// docs/protocol.md is the contract a client in another language is written
// from; these tests tie its tables and examples to this package, so neither
// can change without the other.

func readProtocolDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// section returns the text of doc from the line starting with start up to
// the next line starting with end.
func section(t *testing.T, doc, start, end string) string {
	t.Helper()
	i := strings.Index(doc, "\n"+start)
	if i < 0 {
		t.Fatalf("docs/protocol.md has no %q", start)
	}
	rest := doc[i+1:]
	j := strings.Index(rest[len(start):], "\n"+end)
	if j < 0 {
		t.Fatalf("docs/protocol.md has no %q after %q", end, start)
	}
	return rest[:len(start)+j]
}

// The error-code table of section 8 names every code this package knows,
// with its number.
func TestProtocolDocErrorCodes(t *testing.T) {
	byName := map[string]proto.Code{
		"OK": proto.CodeOK, "BAD_FRAME": proto.CodeBadFrame, "UNSUPPORTED_VERSION": proto.CodeUnsupportedVersion,
		"FRAME_TOO_LARGE": proto.CodeFrameTooLarge, "UNKNOWN_OP": proto.CodeUnknownOp, "CHECKSUM": proto.CodeChecksum,
		"BAD_REQUEST": proto.CodeBadRequest, "UNKNOWN_SESSION": proto.CodeUnknownSession, "NOT_OWNER": proto.CodeNotOwner,
		"DUPLICATE_CHUNK": proto.CodeDuplicateChunk, "CHUNK_GAP": proto.CodeChunkGap, "PAYLOAD_SIZE": proto.CodePayloadSize,
		"NO_CHUNKS": proto.CodeNoChunks, "BAD_LAYOUT": proto.CodeBadLayout, "LIMIT_EXCEEDED": proto.CodeLimitExceeded,
		"INTEGRITY": proto.CodeIntegrity, "NO_SPACE": proto.CodeNoSpace, "UNKNOWN_MODEL": proto.CodeUnknownModel,
		"UNKNOWN_LEASE": proto.CodeUnknownLease, "SESSION_EXISTS": proto.CodeSessionExists,
		"PERMISSION_DENIED": proto.CodePermissionDenied, "SHUTTING_DOWN": proto.CodeShuttingDown,
		"INTERNAL": proto.CodeInternal, "HANDSHAKE_REQUIRED": proto.CodeHandshakeRequired, "UNAVAILABLE": proto.CodeUnavailable,
	}
	doc := section(t, readProtocolDoc(t), "## 8. Errors", "### Connection-level frames")
	row := regexp.MustCompile("(?m)^\\| (\\d+) \\| `([A-Z_]+)` \\|")
	seen := map[proto.Code]bool{}
	for _, m := range row.FindAllStringSubmatch(doc, -1) {
		n, _ := strconv.Atoi(m[1])
		c, ok := byName[m[2]]
		switch {
		case !ok:
			t.Errorf("docs/protocol.md code %s %s: no such proto.Code", m[1], m[2])
		case int(c) != n:
			t.Errorf("docs/protocol.md says %s is %d, proto says %d", m[2], n, c)
		case seen[c]:
			t.Errorf("docs/protocol.md lists %s twice", m[2])
		}
		seen[c] = true
	}
	for c := proto.Code(0); c.Known(); c++ {
		if !seen[c] {
			t.Errorf("proto.Code %d (%v) is missing from the error table of docs/protocol.md", c, c)
		}
	}
	if len(seen) != len(byName) {
		t.Errorf("the error table has %d codes, this test knows %d: add the new one to byName", len(seen), len(byName))
	}
}

// The op table of section 10 names every op this package knows, with its
// number.
func TestProtocolDocOps(t *testing.T) {
	doc := section(t, readProtocolDoc(t), "## 10. Operations", "### 10.1")
	row := regexp.MustCompile("(?m)^\\| 0x([0-9A-Fa-f]{4}) \\| ([A-Z]+) \\|")
	seen := map[proto.Op]bool{}
	for _, m := range row.FindAllStringSubmatch(doc, -1) {
		n, _ := strconv.ParseUint(m[1], 16, 16)
		op := proto.Op(n)
		if !op.Known() || op.String() != m[2] {
			t.Errorf("docs/protocol.md op 0x%s %s: proto says %v", m[1], m[2], op)
		}
		seen[op] = true
	}
	for n := 0; n <= 0xFFFF; n++ {
		if op := proto.Op(n); op.Known() && !seen[op] {
			t.Errorf("proto op %v (0x%04x) is missing from the op table of docs/protocol.md", op, n)
		}
	}
}

// The hex dumps of section 12 are, in order, exactly those Example_wire
// prints (which its Output comment pins to what this package encodes).
func TestProtocolDocHexExamples(t *testing.T) {
	dumpLine := regexp.MustCompile(`(?m)^[0-9a-f]{8}  .*$`)
	doc := section(t, readProtocolDoc(t), "## 12. Examples in hex", "## 13.")
	want := dumpLine.FindAllString(doc, -1)

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		out <- b
	}()
	stdout := os.Stdout
	os.Stdout = w
	Example_wire()
	os.Stdout = stdout
	w.Close()
	got := dumpLine.FindAllString(string(<-out), -1)
	r.Close()

	if len(want) == 0 || len(got) == 0 {
		t.Fatalf("no hex dump lines: doc %d, Example_wire %d", len(want), len(got))
	}
	if !bytes.Equal([]byte(strings.Join(want, "\n")), []byte(strings.Join(got, "\n"))) {
		for i := range max(len(want), len(got)) {
			var a, b string
			if i < len(want) {
				a = want[i]
			}
			if i < len(got) {
				b = got[i]
			}
			if a != b {
				t.Fatalf("docs/protocol.md section 12 differs from Example_wire at dump line %d:\ndoc:     %q\nExample: %q", i, a, b)
			}
		}
	}
}
