package ctl

import (
	"strings"
	"testing"

	"github.com/flashmemory/flashmemory/proto"
)

// explain adds "run as the owner or root" only where that is the fix: a
// session another connection holds is refused for root too, and the
// daemon's message already says what to do.
func TestExplainNotOwner(t *testing.T) {
	for _, tc := range []struct {
		err      error
		want     string
		wantNote bool
	}{
		{proto.CodeNotOwner.Errorf("session %q belongs to uid %d", "s", 1000), "belongs to uid 1000", true},
		{proto.CodeNotOwner.Errorf("session 3 \"s\" is attached to another connection (client \"dec\"): that connection must CLOSE it first (or end), then DELETE it"), "must CLOSE it first", false},
		{proto.CodeNotOwner.Errorf("session %q moved to node n2 (epoch 3; this node holds 2): RESUME it there, or RESUME it here to move it back", "s"), "RESUME it there", false},
	} {
		got := explain(tc.err, "s")
		if got == nil || !strings.Contains(got.Error(), tc.want) {
			t.Fatalf("explain(%v) = %v", tc.err, got)
		}
		if note := strings.Contains(got.Error(), "as the session's owner or as root"); note != tc.wantNote {
			t.Errorf("explain(%v) = %q: owner/root advice %v, want %v", tc.err, got, note, tc.wantNote)
		}
		if proto.CodeOf(got) != proto.CodeNotOwner {
			t.Errorf("explain(%v) lost the code: %v", tc.err, got)
		}
	}
}
