package proto

import (
	"errors"
	"strings"
	"testing"
)

// Invalid UTF-8 in an admin JSON body is refused (BAD_REQUEST), never
// replaced by U+FFFD: "a\xff" must not become the name "a\uFFFD".
func TestAdminJSONRejectsInvalidUTF8(t *testing.T) {
	for _, body := range []string{
		"{\"name\":\"a\xff\"}",
		"{\"name\":\"ok\",\"x\":\"\xc3\"}",
		"{\"name\":\"\xed\xa0\x80\"}", // a surrogate half
	} {
		var m AdminTarget
		err := m.Decode([]byte(body))
		if !errors.Is(err, ErrMalformed) || CodeOf(err) != CodeBadRequest || !strings.Contains(err.Error(), "invalid UTF-8") {
			t.Errorf("%q: %v (%+v), want BAD_REQUEST naming invalid UTF-8", body, err, m)
		}
	}
	var m AdminTarget
	if err := m.Decode([]byte(`{"name":"caf\u00e9 ☕"}`)); err != nil || m.Name != "café ☕" {
		t.Fatalf("valid UTF-8: %v %+v", err, m)
	}
}
