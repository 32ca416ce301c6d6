package daemon

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/flashmemory/flashmemory/proto"
)

// SESSION_EXISTS tells each opener what it can do: the owner may RESUME,
// CLOSE or delete the session; another user can only choose another name
// (it cannot delete someone else's session, so it is never told to).
func TestSessionExistsMessage(t *testing.T) {
	rd, c := startDialed(t)
	ctx := context.Background()
	l := testLayout(8)
	if _, err := c.Open(ctx, &proto.Open{Name: "live", Layout: l}); err != nil {
		t.Fatal(err)
	}
	op, err := c.Open(ctx, &proto.Open{Name: "kept", Persist: true, Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CloseSession(ctx, op.Session, false); err != nil {
		t.Fatal(err)
	}
	fake := func(uid uint32) *conn {
		return &conn{d: rd.d, cred: Cred{UID: uid, GID: uid}, sessions: map[uint64]*session{}, leases: map[uint64]*lease{}}
	}
	me := uint32(os.Getuid())
	for _, tc := range []struct {
		name    string
		uid     uint32
		want    string
		persist bool
		mustNot string
	}{
		{"live", me, "is open: use it, CLOSE it first, or choose another name", false, ""},
		{"live", me + 4242, "taken by another user's session: choose another name", false, "CLOSE"},
		{"kept", me, "RESUME it, or delete it first (flashmemctl delete kept)", true, ""},
		{"kept", me + 4242, "taken by another user's persisted session: choose another name", true, "delete it first"},
	} {
		_, _, err := fake(tc.uid).open(&proto.Open{Name: tc.name, Persist: tc.persist, Layout: l})
		if proto.CodeOf(err) != proto.CodeSessionExists || !strings.Contains(err.Error(), tc.want) ||
			(tc.mustNot != "" && strings.Contains(err.Error(), tc.mustNot)) {
			t.Errorf("OPEN %q by uid %d: %v; want SESSION_EXISTS saying %q", tc.name, tc.uid, err, tc.want)
		}
	}
}
