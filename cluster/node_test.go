package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var testSecret = []byte("0123456789abcdef-test-secret")

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type testCluster struct {
	t      *testing.T
	cfgs   []Config
	stores []*dirStore
	nodes  []*Node
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return nil
}

// newTestCluster starts n real nodes (Raft over TCP on loopback).
func newTestCluster(t *testing.T, n int, tweak func(*Config)) *testCluster {
	t.Helper()
	tc := &testCluster{t: t}
	var boot []string
	root := t.TempDir()
	for i := range n {
		c := Config{NodeID: fmt.Sprintf("n%d", i+1), RaftAddr: freeAddr(t), PeerAddr: freeAddr(t),
			Dir: filepath.Join(root, fmt.Sprintf("n%d", i+1), "raft"), ReplicationFactor: 2, Secret: testSecret,
			Logger: testLogger(t), DownAfter: 1500 * time.Millisecond, RaftLogLevel: "error"}
		if tweak != nil {
			tweak(&c)
		}
		boot = append(boot, c.NodeID+"="+c.RaftAddr)
		tc.cfgs = append(tc.cfgs, c)
		tc.stores = append(tc.stores, &dirStore{dir: filepath.Join(root, fmt.Sprintf("n%d", i+1), "store")})
	}
	tc.nodes = make([]*Node, n)
	for i := range n {
		tc.cfgs[i].Bootstrap = boot
		tc.start(i)
	}
	t.Cleanup(func() {
		for _, nd := range tc.nodes {
			if nd != nil {
				nd.Close()
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, nd := range tc.nodes {
		if err := nd.WaitLeader(ctx); err != nil {
			t.Fatal(err)
		}
	}
	tc.waitMembers(n)
	return tc
}

func (tc *testCluster) start(i int) {
	tc.t.Helper()
	nd, err := Open(tc.cfgs[i], tc.stores[i])
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.nodes[i] = nd
}

func (tc *testCluster) stop(i int) {
	tc.nodes[i].Close()
	tc.nodes[i] = nil
}

func (tc *testCluster) waitMembers(n int) {
	tc.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		ok := true
		for _, nd := range tc.nodes {
			if nd != nil && len(nd.Catalog().Members()) < n {
				ok = false
			}
		}
		if ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	tc.t.Fatalf("members did not register")
}

func (tc *testCluster) waitAlive(i int, ids ...string) {
	tc.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ok := true
		for _, id := range ids {
			ok = ok && tc.nodes[i].Alive(id)
		}
		if ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	tc.t.Fatalf("node %d does not see %v alive", i, ids)
}

func randPages(seed uint64, n, size int) [][]byte {
	r := rand.New(rand.NewPCG(seed, 1))
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, size)
		for j := range out[i] {
			out[i][j] = byte(r.Uint32())
		}
	}
	return out
}

// TestReplicateThenResumeElsewhere: a session persisted with replication
// on n1 survives n1's loss and resumes on another node byte-identical; n1,
// back, holds a stale epoch and is refused.
func TestReplicateThenResumeElsewhere(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	tc.waitAlive(0, "n1", "n2", "n3")
	ctx := context.Background()
	pages := randPages(1, 12, 40_000)
	gens := make([]uint64, len(pages))
	for i := range gens {
		gens[i] = uint64(i + 1)
	}
	if err := tc.stores[0].put("s1", pages, gens, "v1"); err != nil {
		t.Fatal(err)
	}
	s, err := tc.nodes[0].Claim(ctx, "s1", 1000, 1000)
	if err != nil {
		t.Fatal(err)
	}
	res, err := tc.nodes[0].Persist(ctx, SessionInfo{Name: "s1", OwnerUID: 1000, Chunks: 12 * 64}, s.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Replicas) != 2 || res.PagesSent != 12 {
		t.Fatalf("replicas %v, sent %d", res.Replicas, res.PagesSent)
	}
	// A second persist after changing two pages sends only those.
	pages[3] = randPages(9, 1, 40_000)[0]
	gens[3] = 100
	pages[7] = randPages(10, 1, 40_000)[0]
	gens[7] = 101
	if err := tc.stores[0].put("s1", pages, gens, "v2"); err != nil {
		t.Fatal(err)
	}
	res, err = tc.nodes[0].Persist(ctx, SessionInfo{Name: "s1", OwnerUID: 1000, Chunks: 12 * 64}, s.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	if res.PagesSent != 2 {
		t.Fatalf("incremental persist sent %d pages, want 2", res.PagesSent)
	}
	replica := res.Replicas[1]
	other := map[string]int{"n2": 1, "n3": 2}
	// The node that is not a replica resumes: every page comes over the wire.
	var target int
	for id, i := range other {
		if id != replica {
			target = i
		}
	}
	tc.stop(0)
	ar, err := tc.nodes[target].Acquire(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if !ar.Moved || ar.Pulled != 12 || ar.Verified != 12 || ar.Bad != 0 || ar.Epoch != 2 {
		t.Fatalf("acquire: %+v", ar)
	}
	for i, p := range pages {
		gen, got, err := tc.stores[target].ReadPage(ctx, "s1", uint32(i))
		if err != nil || gen != gens[i] || !bytes.Equal(got, p) {
			t.Fatalf("page %d: gen %d want %d, equal %v, err %v", i, gen, gens[i], bytes.Equal(got, p), err)
		}
	}
	meta, _, err := tc.stores[target].Meta(ctx, "s1")
	if err != nil || !bytes.Contains(meta, []byte("v2")) {
		t.Fatalf("meta %q err %v", meta, err)
	}
	// n1 comes back: its epoch is stale; it can neither persist nor claim
	// with its old epoch.
	tc.start(0)
	deadline := time.Now().Add(10 * time.Second)
	for tc.nodes[0].CheckOwner("s1", 1) == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if err := tc.nodes[0].CheckOwner("s1", 1); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("restarted old owner: %v", err)
	}
	if _, err := tc.nodes[0].Persist(ctx, SessionInfo{Name: "s1"}, 1); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("persist at a stale epoch: %v", err)
	}
	// A damaged local page is healed from a replica on the next acquire.
	path := filepath.Join(tc.stores[target].dir, "s1", "p5")
	b, _ := os.ReadFile(path)
	b[len(b)-1] ^= 0xFF
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ar, err = tc.nodes[target].Acquire(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if ar.Healed != 1 || ar.Pulled != 1 || ar.Moved {
		t.Fatalf("heal: %+v", ar)
	}
	if tc.nodes[target].Metrics().SelfHeals.Load() != 1 {
		t.Fatalf("self heals %d", tc.nodes[target].Metrics().SelfHeals.Load())
	}
}

// TestRereplicateAfterLoss: when a replica dies, the survivor copies the
// session to the third node and the catalog names it.
func TestRereplicateAfterLoss(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	tc.waitAlive(0, "n1", "n2", "n3")
	ctx := context.Background()
	pages := randPages(2, 5, 10_000)
	gens := []uint64{1, 2, 3, 4, 5}
	tc.stores[0].put("s", pages, gens, "x")
	s, err := tc.nodes[0].Claim(ctx, "s", 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	res, err := tc.nodes[0].Persist(ctx, SessionInfo{Name: "s"}, s.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	lost := map[string]int{"n2": 1, "n3": 2}[res.Replicas[1]]
	tc.stop(lost)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ss, _ := tc.nodes[0].Catalog().Session("s")
		if len(ss.Replicas) == 3 {
			if tc.nodes[0].Metrics().Rereplications.Load() == 0 {
				t.Fatal("replicas grew without a re-replication")
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("session was not re-replicated")
}

// TestPeerWithoutSecretRefused: a client with another secret, and a plain
// TCP client, get nothing from the peer or Raft port.
func TestPeerWithoutSecretRefused(t *testing.T) {
	tc := newTestCluster(t, 1, func(c *Config) { c.ReplicationFactor = 1 })
	nd := tc.nodes[0]
	for _, addr := range []string{tc.cfgs[0].PeerAddr, tc.cfgs[0].RaftAddr} {
		bad := newPeerClient(&dialer{id: "intruder", secret: []byte("not-the-cluster-secret!!")})
		var pr pingReply
		_, err := bad.call(context.Background(), addr, popPing, struct{}{}, &pr)
		if !errors.Is(err, ErrAuth) {
			t.Fatalf("%s: wrong secret: %v", addr, err)
		}
		// A client that skips the handshake: the server closes after the
		// timeout without answering a request.
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(bytes.Repeat([]byte{popPing, 0, 0, 0, 0, 0, 0, 0, 0}, 20))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 4096)
		total := 0
		for {
			n, err := c.Read(buf)
			total += n
			if err != nil {
				break
			}
		}
		c.Close()
		if total > len(authMagic)+nonceLen+1 {
			t.Fatalf("%s answered %d bytes to an unauthenticated client", addr, total)
		}
	}
	if nd.Metrics().Refused.Load() < 3 {
		t.Fatalf("refused %d", nd.Metrics().Refused.Load())
	}
	good := newPeerClient(&dialer{id: "n9", secret: testSecret})
	var pr pingReply
	if _, err := good.call(context.Background(), tc.cfgs[0].PeerAddr, popPing, struct{}{}, &pr); err != nil || pr.ID != "n1" {
		t.Fatalf("member ping: %v %+v", err, pr)
	}
}

// TestSnapshotCatchUp: a node that missed many entries catches up by
// snapshot install, and a catalog write from every node goes through the
// leader.
func TestSnapshotCatchUp(t *testing.T) {
	tc := newTestCluster(t, 3, func(c *Config) { c.SnapshotThreshold = 64 })
	tc.stop(2)
	ctx := context.Background()
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 150 {
				if _, err := tc.nodes[w].Claim(ctx, fmt.Sprintf("w%d-%d", w, i), 0, 0); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, i := range []int{0, 1} {
		if tc.nodes[i].IsLeader() {
			if err := tc.nodes[i].Snapshot(); err != nil {
				t.Fatal(err)
			}
		}
	}
	tc.start(2)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if len(tc.nodes[2].Catalog().Sessions()) == 300 {
			st := tc.nodes[2].Status()
			if st.LastSnapshot == 0 {
				t.Fatalf("caught up without a snapshot: %+v", st)
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("restarted node has %d of 300 sessions", len(tc.nodes[2].Catalog().Sessions()))
}

// TestJoinAndRemove: a node started without bootstrap joins through any
// member's peer port (a follower forwards to the leader), receives the
// catalog, and is removed again.
func TestJoinAndRemove(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	ctx := context.Background()
	if _, err := tc.nodes[0].Claim(ctx, "before-join", 1, 1); err != nil {
		t.Fatal(err)
	}
	c := Config{NodeID: "n4", RaftAddr: freeAddr(t), PeerAddr: freeAddr(t), Dir: filepath.Join(t.TempDir(), "raft"),
		ReplicationFactor: 2, Secret: testSecret, Logger: testLogger(t), RaftLogLevel: "error"}
	n4, err := Open(c, &dirStore{dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer n4.Close()
	var follower *Node
	for _, n := range tc.nodes {
		if !n.IsLeader() {
			follower = n
		}
	}
	m, _ := follower.Catalog().Member(follower.ID())
	if err := n4.Join(ctx, m.PeerAddr); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := n4.WaitLeader(wctx); err != nil {
		t.Fatal(err)
	}
	for n4.Catalog().AppliedIndex() == 0 || len(n4.Catalog().Sessions()) != 1 {
		if wctx.Err() != nil {
			t.Fatal("the joined node did not receive the catalog")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := tc.nodes[0].Status(); len(st.Members) != 4 {
		t.Fatalf("members after join: %+v", st.Members)
	}
	if err := follower.Remove(ctx, "n4"); err != nil {
		t.Fatal(err)
	}
	// Remove returns once the leader applied the removal; nodes[0] may be a
	// follower that applies it a moment later, so wait for both views.
	for {
		_, inCatalog := tc.nodes[0].Catalog().Member("n4")
		if len(tc.nodes[0].Status().Members) == 3 && !inCatalog {
			break
		}
		if wctx.Err() != nil {
			t.Fatalf("after remove: members %+v, n4 in the catalog: %v", tc.nodes[0].Status().Members, inCatalog)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Removing an id that is not a member (a typo, or n4 again) is an
	// error naming it and the members, from the leader and from a follower.
	var leader *Node
	for _, n := range tc.nodes {
		if n.IsLeader() {
			leader = n
		}
	}
	for _, tt := range []struct {
		via *Node
		id  string
	}{{leader, "n9"}, {follower, "n9"}, {follower, "n4"}} {
		err := tt.via.Remove(ctx, tt.id)
		if !errors.Is(err, ErrUnknownMember) {
			t.Fatalf("remove %s via %s: %v, want ErrUnknownMember", tt.id, tt.via.ID(), err)
		}
		for _, want := range []string{`"` + tt.id + `"`, "n1, n2, n3", "cluster status"} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("remove %s: message %q lacks %q", tt.id, err, want)
			}
		}
	}
	// A removal that stopped half way (the member left the Raft
	// configuration but is still in the catalog, or only still holds a
	// copy) finishes when run again.
	if _, err := leader.applyLocal(&Command{Op: opMember, Member: &Member{ID: "n5", PeerAddr: "127.0.0.1:1"}}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := follower.Remove(ctx, "n5"); err != nil {
		t.Fatalf("re-run of a half-done removal: %v", err)
	}
	if _, ok := leader.Catalog().Member("n5"); ok {
		t.Fatal("n5 still in the catalog after remove")
	}
	s, _ := leader.Catalog().Session("before-join")
	if r, err := leader.applyLocal(&Command{Op: opAddReplicas, Name: s.Name, Epoch: s.Epoch, Version: s.Version, Add: []string{"n6"}}, 5*time.Second); err != nil || r.Error() != nil {
		t.Fatal(err, r.Error())
	}
	if err := leader.Remove(ctx, "n6"); err != nil {
		t.Fatalf("re-run of a removal that left a copy in the catalog: %v", err)
	}
	if s, _ := leader.Catalog().Session("before-join"); slices.Contains(s.Replicas, "n6") {
		t.Fatalf("n6 still a replica after remove: %v", s.Replicas)
	}
}

// TestDeletedNameFencesLateWrites: once a delete is applied, replica writes
// from an owner of that epoch or older (a PERSIST still in flight) are
// refused, so they cannot bring the deleted copy back; a new claim of the
// name lifts the fence.
func TestDeletedNameFencesLateWrites(t *testing.T) {
	tc := newTestCluster(t, 3, nil)
	tc.waitAlive(0, "n1", "n2", "n3")
	ctx := context.Background()
	s, err := tc.nodes[0].Claim(ctx, "gone", 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := tc.nodes[0].Delete(ctx, "gone", s.Epoch); err != nil {
		t.Fatal(err)
	}
	replica := tc.nodes[1]
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := replica.deletedAt("gone"); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the delete was not applied on n2")
		}
	}
	m, _ := replica.cat.Member("n2")
	page := randPages(5, 1, 1000)[0]
	h := pagesHdr{Name: "gone", Owner: "n1", Epoch: s.Epoch, Pages: []PageInfo{{Page: 0, Gen: 1, CRC: Checksum(page)}}, Lens: []int{len(page)}}
	if _, err := tc.nodes[0].client.call(ctx, m.PeerAddr, popPutPages, h, nil, page); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("a late page write to a deleted name: %v, want ErrStaleEpoch", err)
	}
	if _, err := tc.nodes[0].client.call(ctx, m.PeerAddr, popPutMeta, nameHdr{Name: "gone", CRC: Checksum(page), Owner: "n1", Epoch: s.Epoch}, nil, page); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("a late metadata write to a deleted name: %v, want ErrStaleEpoch", err)
	}
	// The name lives again after a new claim.
	if _, err := tc.nodes[0].Claim(ctx, "gone", 1, 1); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, ok := replica.deletedAt("gone"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the new claim did not lift the fence on n2")
		}
	}
}
