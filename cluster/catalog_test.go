package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/raft"
)

func TestCatalogCommands(t *testing.T) {
	c := NewCatalog()
	for _, id := range []string{"n1", "n2", "n3"} {
		if r := c.ApplyCommand(&Command{Op: opMember, Member: &Member{ID: id, PeerAddr: id + ":1"}}); r.Err != "" {
			t.Fatal(r.Err)
		}
	}
	steps := []struct {
		name    string
		cmd     Command
		wantErr error
		check   func(t *testing.T, s *Session)
	}{
		{"claim creates at epoch 1", Command{Op: opClaim, Name: "a", Node: "n1"}, nil, func(t *testing.T, s *Session) {
			if s.Owner != "n1" || s.Epoch != 1 {
				t.Fatalf("owner %s epoch %d", s.Owner, s.Epoch)
			}
		}},
		{"claim of an existing session with epoch 0 is stale", Command{Op: opClaim, Name: "a", Node: "n2"}, ErrStaleEpoch, nil},
		{"move with a wrong epoch is stale", Command{Op: opClaim, Name: "a", Node: "n2", Epoch: 7}, ErrStaleEpoch, nil},
		{"assign picks one other member", Command{Op: opAssign, Name: "a", Node: "n1", Epoch: 1, RF: 2}, nil, func(t *testing.T, s *Session) {
			if len(s.Assigned) != 1 || s.Assigned[0] == "n1" {
				t.Fatalf("assigned %v", s.Assigned)
			}
		}},
		{"assign by a non-owner is stale", Command{Op: opAssign, Name: "a", Node: "n2", Epoch: 1, RF: 2}, ErrStaleEpoch, nil},
		{"commit", Command{Op: opCommit, Name: "a", Node: "n1", Epoch: 1, Session: &Session{Chunks: 64, Pages: []PageEntry{{1, 5}}, Replicas: []string{"n1", "n2"}}}, nil, func(t *testing.T, s *Session) {
			if s.Version != 1 || len(s.Pages) != 1 || s.Chunks != 64 {
				t.Fatalf("%+v", s)
			}
		}},
		{"move to n2 bumps the epoch", Command{Op: opClaim, Name: "a", Node: "n2", Epoch: 1}, nil, func(t *testing.T, s *Session) {
			if s.Owner != "n2" || s.Epoch != 2 || s.Version != 1 {
				t.Fatalf("%+v", s)
			}
		}},
		{"the old owner's commit is refused", Command{Op: opCommit, Name: "a", Node: "n1", Epoch: 1, Session: &Session{}}, ErrStaleEpoch, nil},
		{"add replicas at a stale version is refused", Command{Op: opAddReplicas, Name: "a", Epoch: 2, Version: 0, Add: []string{"n3"}}, ErrStaleEpoch, nil},
		{"add replicas", Command{Op: opAddReplicas, Name: "a", Epoch: 2, Version: 1, Add: []string{"n3"}}, nil, func(t *testing.T, s *Session) {
			if !cmp.Equal(s.Replicas, []string{"n1", "n2", "n3"}) {
				t.Fatalf("%v", s.Replicas)
			}
		}},
		{"drop replica", Command{Op: opDropReplica, Node: "n1"}, nil, nil},
		{"delete by the old owner is refused", Command{Op: opDelete, Name: "a", Node: "n1", Epoch: 1}, ErrStaleEpoch, nil},
		{"unknown op", Command{Op: "bogus"}, ErrBadCommand, nil},
		{"assign of a missing session", Command{Op: opAssign, Name: "zz", Node: "n1", Epoch: 1, RF: 2}, ErrNotFound, nil},
	}
	for _, st := range steps {
		r := c.ApplyCommand(&st.cmd)
		err := r.Error()
		if !errors.Is(err, st.wantErr) || (st.wantErr == nil && err != nil) {
			t.Fatalf("%s: err %v, want %v", st.name, err, st.wantErr)
		}
		if st.check != nil {
			st.check(t, r.Session)
		}
	}
	s, _ := c.Session("a")
	if !cmp.Equal(s.Replicas, []string{"n2", "n3"}) {
		t.Fatalf("after drop: %v", s.Replicas)
	}

	// Snapshot and restore give the same state.
	snap, err := c.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	c2 := NewCatalog()
	if err := c2.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(c.Sessions(), c2.Sessions()); d != "" {
		t.Fatal(d)
	}
	if d := cmp.Diff(c.Members(), c2.Members()); d != "" {
		t.Fatal(d)
	}
	if r := c.ApplyCommand(&Command{Op: opDelete, Name: "a", Node: "n2", Epoch: 2}); r.Err != "" {
		t.Fatal(r.Err)
	}
	if _, ok := c.Session("a"); ok {
		t.Fatal("deleted session still listed")
	}
	if err := c2.Restore(io.NopCloser(bytes.NewReader([]byte("{bad")))); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("bad snapshot: %v", err)
	}
}

// TestAssignSpreadsLoad: new sessions go to the least loaded members, and
// the choice is the same on every replica of the FSM.
func TestAssignSpreadsLoad(t *testing.T) {
	c := NewCatalog()
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		c.ApplyCommand(&Command{Op: opMember, Member: &Member{ID: id}})
	}
	count := map[string]int{}
	for i := range 30 {
		name := string(rune('a' + i))
		owner := []string{"n1", "n2", "n3", "n4"}[i%4]
		c.ApplyCommand(&Command{Op: opClaim, Name: name, Node: owner})
		r := c.ApplyCommand(&Command{Op: opAssign, Name: name, Node: owner, Epoch: 1, RF: 3})
		if len(r.Session.Assigned) != 2 {
			t.Fatalf("assigned %v", r.Session.Assigned)
		}
		reps := append([]string{owner}, r.Session.Assigned...)
		c.ApplyCommand(&Command{Op: opCommit, Name: name, Node: owner, Epoch: 1, Session: &Session{Replicas: reps}})
		for _, id := range reps {
			count[id]++
		}
	}
	for id, n := range count {
		if n < 20 || n > 25 {
			t.Fatalf("member %s holds %d of 90 copies: %v", id, n, count)
		}
	}
}

type memSink struct{ bytes.Buffer }

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { return nil }
func (m *memSink) Close() error  { return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

func FuzzCatalogApply(f *testing.F) {
	f.Add([]byte(`{"op":"claim","name":"a","node":"n1"}`))
	f.Add([]byte(`{"op":"commit","name":"a","node":"n1","epoch":1,"session":{"pages":[{"g":1,"c":2}]}}`))
	f.Add([]byte(`{"op":"member"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := NewCatalog()
		c.Apply(&raft.Log{Type: raft.LogCommand, Data: []byte(`{"op":"claim","name":"a","node":"n1"}`), Index: 1})
		r, _ := c.Apply(&raft.Log{Type: raft.LogCommand, Data: b, Index: 2}).(*Result)
		if r == nil {
			t.Fatal("nil result")
		}
	})
}

// TestRestoreReportsDeletionsMissed: a member that catches up by snapshot
// learns which names were deleted after what it had applied (it never
// applies those delete commands); its own start, and names claimed again,
// report nothing.
func TestRestoreReportsDeletionsMissed(t *testing.T) {
	cmdLog := func(i uint64, c Command) *raft.Log {
		b, _ := json.Marshal(&c)
		return &raft.Log{Index: i, Type: raft.LogCommand, Data: b}
	}
	leader := NewCatalog()
	leader.Apply(cmdLog(1, Command{Op: opClaim, Name: "old", Node: "n1"}))
	leader.Apply(cmdLog(2, Command{Op: opDelete, Name: "old", Node: "n1", Epoch: 1}))
	leader.Apply(cmdLog(3, Command{Op: opNoop}))
	leader.Apply(cmdLog(4, Command{Op: opClaim, Name: "gone", Node: "n1"}))
	leader.Apply(cmdLog(5, Command{Op: opClaim, Name: "back", Node: "n1"}))
	leader.Apply(cmdLog(6, Command{Op: opDelete, Name: "gone", Node: "n1", Epoch: 1}))
	leader.Apply(cmdLog(7, Command{Op: opDelete, Name: "back", Node: "n1", Epoch: 1}))
	leader.Apply(cmdLog(8, Command{Op: opClaim, Name: "back", Node: "n2"}))
	snap, err := leader.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.(*catalogSnapshot).Persist(&sink); err != nil {
		t.Fatal(err)
	}
	buf := sink.Buffer
	for _, tc := range []struct {
		name    string
		applied uint64 // what the member had applied before the snapshot
		want    []string
	}{
		{"catch-up after index 3", 3, []string{"gone"}},
		{"catch-up after index 1", 1, []string{"old", "gone"}},
		{"own start", 0, nil},
		{"caught up already", 8, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewCatalog()
			if tc.applied > 0 {
				c.Apply(cmdLog(tc.applied, Command{Op: opNoop}))
			}
			var got []string
			c.onRestore = func(d []string) { got = d }
			if err := c.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("deleted names reported (-want +got):\n%s", diff)
			}
			if c.AppliedIndex() != 8 {
				t.Fatalf("applied index after restore %d, want 8", c.AppliedIndex())
			}
		})
	}
}

// TestRetriedCommandAppliesOnce: a command whose first copy was committed
// but whose answer was lost is retried with the same ID; its second copy in
// the log answers what the first did (a claim succeeded, a delete
// succeeded) instead of failing as stale or not found — also on a member
// that restored a snapshot taken between the two copies.
func TestRetriedCommandAppliesOnce(t *testing.T) {
	c := NewCatalog()
	claim := Command{Op: opClaim, Name: "s", Node: "n1", ID: "n1-a"}
	first := c.ApplyCommand(&claim)
	if first.Err != "" || first.Session.Epoch != 1 {
		t.Fatalf("claim: %+v", first)
	}
	if r := c.ApplyCommand(&Command{Op: opCommit, Name: "s", Node: "n1", Epoch: 1, ID: "n1-b",
		Session: &Session{Chunks: 64, Pages: []PageEntry{{1, 5}}, Replicas: []string{"n1"}}}); r.Err != "" {
		t.Fatal(r.Err)
	}
	again := c.ApplyCommand(&claim)
	if again.Err != "" || again.Session.Epoch != 1 || again.Session.Owner != "n1" || len(again.Session.Pages) != 1 {
		t.Fatalf("retried claim: %+v", again)
	}
	// Without the ID the same command is a second claim: stale.
	if r := c.ApplyCommand(&Command{Op: opClaim, Name: "s", Node: "n1"}); r.Kind != "stale" {
		t.Fatalf("a second claim without an ID: %+v", r)
	}
	move := Command{Op: opClaim, Name: "s", Node: "n2", Epoch: 1, ID: "n2-a"}
	if r := c.ApplyCommand(&move); r.Err != "" || r.Session.Epoch != 2 {
		t.Fatalf("move: %+v", r)
	}
	del := Command{Op: opDelete, Name: "s", Node: "n2", Epoch: 2, ID: "n2-b"}
	if r := c.ApplyCommand(&del); r.Err != "" {
		t.Fatal(r.Err)
	}
	snap, err := c.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.(*catalogSnapshot).Persist(&sink); err != nil {
		t.Fatal(err)
	}
	for _, cat := range []*Catalog{c, NewCatalog()} {
		if cat != c {
			if err := cat.Restore(io.NopCloser(bytes.NewReader(sink.Buffer.Bytes()))); err != nil {
				t.Fatal(err)
			}
		}
		if r := cat.ApplyCommand(&del); r.Err != "" {
			t.Fatalf("retried delete: %+v", r)
		}
		// The retried move answers its own result (epoch 2), although the
		// session is gone since.
		if r := cat.ApplyCommand(&move); r.Err != "" || r.Session == nil || r.Session.Epoch != 2 {
			t.Fatalf("retried move: %+v", r)
		}
		if _, ok := cat.Session("s"); ok {
			t.Fatal("a retried command brought a deleted session back")
		}
	}
	// The record is bounded.
	for i := range maxApplied + 10 {
		c.ApplyCommand(&Command{Op: opNoop, ID: fmt.Sprintf("x-%d", i)})
	}
	if len(c.st.Applied) != maxApplied {
		t.Fatalf("%d applied commands kept, want %d", len(c.st.Applied), maxApplied)
	}
	if r := c.ApplyCommand(&Command{Op: opNoop, ID: "x-20"}); r.Err != "" {
		t.Fatal(r.Err)
	}
	if r := c.ApplyCommand(&Command{Op: opClaim, Name: "t", Node: "n1", ID: "x-5"}); r.Err != "" || r.Session == nil {
		t.Fatalf("an ID dropped from the record applies as new: %+v", r)
	}
}
