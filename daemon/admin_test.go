package daemon

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// The session-management admin ops (SESSIONS over persisted sessions,
// INSPECT/EVICT/VERIFY/DELETE/SAVE by name) with the owner rule: another
// non-admin uid sees none of them and gets UNKNOWN_SESSION from each op, as
// for a missing session; the owner lists, verifies and deletes.
func TestAdminSessionManagement(t *testing.T) {
	dir := t.TempDir()
	r := start(t, testConfig(t, dir))
	defer r.shutdown(t)
	ctx := context.Background()
	c := dial(t, r.d.cfg.Socket)
	rng := rand.New(rand.NewPCG(3, 4))
	l := testLayout(64)
	const chunks = 64*3 + 10 // 4 pages
	op, err := c.Open(ctx, &proto.Open{Name: "kept", Persist: true, Model: "test", Layout: l, Device: proto.DeviceHostOnly})
	if err != nil {
		t.Fatal(err)
	}
	op.Region.Close()
	appendAll(t, c, op.Session, &l, 1, 0, chunks, rng)
	if err := c.CloseSession(ctx, op.Session, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Evict(ctx, proto.AdminTarget{Name: "kept"}); err != nil {
		t.Fatal(err)
	}
	kept := op.Session

	uid := uint32(os.Getuid())
	outsider := &conn{d: r.d, cred: Cred{UID: uid + 4242, GID: uid + 4242}}
	owner := &conn{d: r.d, cred: Cred{UID: uid, GID: uint32(os.Getgid())}}

	// The owner lists it as on SSD only, with its pages there.
	m, err := owner.admin(proto.OpSessions, nil)
	if err != nil {
		t.Fatal(err)
	}
	ss := m.(*proto.SessionsReply).Sessions
	if len(ss) != 1 || ss[0].Name != "kept" || ss[0].State != "on-ssd" || ss[0].Pages != 4 || ss[0].TierPages["ssd"] != 4 ||
		ss[0].OwnerUID != uid || ss[0].LastUsed.IsZero() || time.Since(ss[0].LastUsed) > time.Minute {
		t.Fatalf("owner's SESSIONS: %+v", ss)
	}
	// The outsider sees nothing and can do nothing, by name or by id.
	m, err = outsider.admin(proto.OpSessions, nil)
	if err != nil || len(m.(*proto.SessionsReply).Sessions) != 0 {
		t.Fatalf("outsider's SESSIONS: %v %+v", err, m)
	}
	for _, op := range []proto.Op{proto.OpInspect, proto.OpEvict, proto.OpVerify, proto.OpDelete, proto.OpSave} {
		for _, tg := range []proto.AdminTarget{{Name: "kept"}, {Session: kept}} {
			if _, err := outsider.admin(op, &tg); proto.CodeOf(err) != proto.CodeUnknownSession {
				t.Errorf("outsider %s %+v: %v, want UNKNOWN_SESSION", op, tg, err)
			}
		}
	}
	// The owner inspects, verifies, evicts (nothing to do) and saves
	// (already persisted) it by id and by name.
	m, err = owner.admin(proto.OpInspect, &proto.AdminTarget{Session: kept})
	if err != nil || m.(*proto.InspectReply).Session.State != "on-ssd" || m.(*proto.InspectReply).TierPages["ssd"] != 4 {
		t.Fatalf("INSPECT: %v %+v", err, m)
	}
	m, err = owner.admin(proto.OpVerify, &proto.AdminTarget{Name: "kept"})
	if v, ok := m.(*proto.VerifyReply); err != nil || !ok || v.Pages != 4 || v.Verified != 4 || v.Bad != 0 || v.InMemory != 0 || v.Bytes != 4*l.PageBytes() {
		t.Fatalf("VERIFY: %v %+v", err, m)
	}
	for _, op := range []proto.Op{proto.OpEvict, proto.OpSave} {
		m, err = owner.admin(op, &proto.AdminTarget{Name: "kept"})
		if err != nil || !m.(*proto.EvictReply).OnSSDOnly {
			t.Fatalf("%s of a session on SSD only: %v %+v", op, err, m)
		}
	}

	// A live named session: SAVE persists it, VERIFY reads it back from
	// SSD, DELETE removes it and its pages.
	op2, err := c.Open(ctx, &proto.Open{Name: "live", Model: "test", Layout: l, Device: proto.DeviceHostOnly})
	if err != nil {
		t.Fatal(err)
	}
	op2.Region.Close()
	appendAll(t, c, op2.Session, &l, 2, 0, 64, rng)
	if _, err := owner.admin(proto.OpVerify, &proto.AdminTarget{Name: "live"}); err != nil {
		t.Fatal(err) // not on SSD yet: verified from memory
	}
	if m, err = owner.admin(proto.OpSave, &proto.AdminTarget{Name: "live"}); err != nil || m.(*proto.EvictReply).OnSSDOnly {
		t.Fatalf("SAVE: %v %+v", err, m)
	}
	if _, err := r.d.store.SSD().GetMeta(ctx, "live"); err != nil {
		t.Fatalf("SAVE wrote no metadata: %v", err)
	}
	m, err = owner.admin(proto.OpVerify, &proto.AdminTarget{Name: "live"})
	if v := m.(*proto.VerifyReply); err != nil || v.Verified != 1 || v.Bad != 0 || v.InMemory != 0 {
		t.Fatalf("VERIFY after SAVE: %v %+v", err, v)
	}
	if _, err := owner.admin(proto.OpSave, &proto.AdminTarget{Session: 999}); proto.CodeOf(err) != proto.CodeUnknownSession {
		t.Errorf("SAVE of a missing session: %v", err)
	}

	// DELETE removes both: metadata and pages, live (detached: c lets go of
	// it first, as DELETE of another connection's session is refused) or on
	// SSD.
	if err := c.CloseSession(ctx, op2.Session, false); err != nil {
		t.Fatal(err)
	}
	for _, tg := range []proto.AdminTarget{{Name: "kept"}, {Name: "live"}} {
		if _, err := owner.admin(proto.OpDelete, &tg); err != nil {
			t.Fatalf("DELETE %+v: %v", tg, err)
		}
		if _, err := r.d.store.SSD().GetMeta(ctx, tg.Name); !errors.Is(err, tiers.ErrNotFound) {
			t.Errorf("metadata of %s after DELETE: %v", tg.Name, err)
		}
	}
	for _, id := range []uint64{kept, op2.Session} {
		if pages, err := r.d.store.SSD().Pages(ctx, id); err != nil || len(pages) != 0 {
			t.Errorf("session %d has pages %v on SSD after DELETE (%v)", id, pages, err)
		}
	}
	m, err = owner.admin(proto.OpSessions, nil)
	if err != nil || m.(*proto.SessionsReply).Sessions == nil || len(m.(*proto.SessionsReply).Sessions) != 0 {
		t.Fatalf("SESSIONS after DELETE: %v %+v", err, m)
	}
	if _, err := owner.admin(proto.OpDelete, &proto.AdminTarget{Name: "kept"}); proto.CodeOf(err) != proto.CodeUnknownSession {
		t.Errorf("second DELETE: %v", err)
	}
}

// DELETE of a session another live connection holds is refused (that
// connection must CLOSE it first), by id and by name, for the owner's uid
// and for root alike; the holder keeps working. The holding connection
// itself may DELETE it, and once its connection ends a persisted session
// (now detached) may be deleted from anywhere.
func TestDeleteAttachedToAnotherConnRefused(t *testing.T) {
	r := start(t, testConfig(t, t.TempDir()))
	defer r.shutdown(t)
	ctx := context.Background()
	holder, other := dial(t, r.d.cfg.Socket), dial(t, r.d.cfg.Socket)
	rng := rand.New(rand.NewPCG(5, 6))
	l := testLayout(64)
	open := func(c *proto.Client, name string, persist bool) uint64 {
		t.Helper()
		op, err := c.Open(ctx, &proto.Open{Name: name, Persist: persist, Model: "test", Layout: l, Device: proto.DeviceHostOnly})
		if err != nil {
			t.Fatal(err)
		}
		op.Region.Close()
		appendAll(t, c, op.Session, &l, 1, 0, 70, rng)
		return op.Session
	}
	kept, eph := open(holder, "held", true), open(holder, "", false)
	for _, tg := range []proto.AdminTarget{{Name: "held"}, {Session: kept}, {Session: eph}} {
		_, err := other.Delete(ctx, tg)
		if proto.CodeOf(err) != proto.CodeNotOwner || !strings.Contains(err.Error(), "CLOSE") {
			t.Errorf("DELETE %+v of a session another connection holds: %v, want NOT_OWNER naming CLOSE", tg, err)
		}
	}
	// The holder's sessions are intact.
	for _, id := range []uint64{kept, eph} {
		appendAll(t, holder, id, &l, 1, 70, 140, rng)
		res, err := holder.Cycle(ctx, []proto.CycleEntry{{Session: id, Position: 140, Queries: queries(rng, 64, 3)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("cycle of session %d after a refused DELETE: %v %v", id, err, res[0].Err)
		}
		if err := holder.Release(ctx, res[0].Lease); err != nil {
			t.Fatal(err)
		}
	}
	// The holder may delete its own.
	if _, err := holder.Delete(ctx, proto.AdminTarget{Session: eph}); err != nil {
		t.Fatalf("DELETE by the holding connection: %v", err)
	}
	// Detached once its connection ends: now anyone of the uid may.
	holder.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := other.Delete(ctx, proto.AdminTarget{Name: "held"})
		if err == nil {
			break
		}
		if proto.CodeOf(err) != proto.CodeNotOwner || time.Now().After(deadline) {
			t.Fatalf("DELETE of a detached session: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := r.d.store.SSD().GetMeta(ctx, "held"); !errors.Is(err, tiers.ErrNotFound) {
		t.Errorf("metadata after DELETE: %v", err)
	}
}

// SAVE from another connection turns an ephemeral session persisted while
// its holder closes, persists or drops it: the holder reads the flag under
// the session lock (go test -race finds the unsynchronized read otherwise),
// and whichever wins, the session is either deleted with its metadata or
// kept with it.
func TestSaveRacesHolder(t *testing.T) {
	r := start(t, testConfig(t, t.TempDir()))
	defer r.shutdown(t)
	uid := uint32(os.Getuid())
	l := testLayout(8)
	for i := range 6 {
		holder := newConn(r.d, nil, Cred{UID: uid, GID: uint32(os.Getgid())})
		holder.version = 1
		other := &conn{d: r.d, cred: holder.cred}
		name := "race" + string(rune('a'+i))
		m, fds, err := holder.open(&proto.Open{Name: name, Model: "test", Layout: l, Device: proto.DeviceHostOnly})
		if err != nil {
			t.Fatal(err)
		}
		for _, fd := range fds {
			_ = os.NewFile(uintptr(fd), "region").Close()
		}
		id := m.(*proto.OpenReply).Session
		done := make(chan error, 1)
		go func() {
			_, err := other.admin(proto.OpSave, &proto.AdminTarget{Name: name})
			done <- err
		}()
		time.Sleep(20 * time.Millisecond) // SAVE first, mostly: no lock orders it before the holder's read
		var herr error
		switch i % 3 {
		case 0:
			herr = holder.closeSession(&proto.Close{Session: id})
		case 1:
			if herr = holder.persist(&proto.Persist{Session: id}); proto.CodeOf(herr) == proto.CodeBadRequest {
				herr = nil // SAVE had not run yet
			}
			holder.teardown()
		default:
			holder.teardown()
		}
		if herr != nil {
			t.Fatalf("holder: %v", herr)
		}
		if err := <-done; err != nil && proto.CodeOf(err) != proto.CodeUnknownSession {
			t.Fatalf("SAVE: %v", err)
		}
		// Kept (detached in memory, or on SSD) only with its metadata, and
		// then whole; else gone with it.
		r.d.mu.Lock()
		live := r.d.byName[name]
		r.d.mu.Unlock()
		_, merr := r.d.store.SSD().GetMeta(context.Background(), name)
		if live != nil && merr != nil {
			t.Fatalf("%s: kept in memory without metadata: %v", name, merr)
		}
		if merr == nil {
			v, err := other.admin(proto.OpVerify, &proto.AdminTarget{Name: name})
			if err != nil || v.(*proto.VerifyReply).Bad != 0 {
				t.Fatalf("VERIFY %s: %v %+v", name, err, v)
			}
			if _, err := other.admin(proto.OpDelete, &proto.AdminTarget{Name: name}); err != nil {
				t.Fatalf("DELETE %s: %v", name, err)
			}
		}
	}
}
