package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/proto"
)

// peerProxy stands in front of every member's Raft and peer ports (the
// members advertise its addresses: raft_advertise, peer_advertise). It
// reads the connecting member's id from the cluster handshake (server
// hello: magic + 32-byte nonce; client hello: id length, id, ...) and
// drops connections that cross the partition, closing live ones when the
// partition starts. Loopback has no per-member source address, so the
// handshake is the only way to tell who dials.
type peerProxy struct {
	mu    sync.Mutex
	cut   map[string]bool
	conns map[*proxyConn]struct{}
	lns   []net.Listener
	wg    sync.WaitGroup
	// dropped counts connections refused because they crossed.
	dropped int
	closed  bool
}

type proxyConn struct {
	src, dst string
	a, b     net.Conn
}

// helloLen is the server hello of the cluster handshake (cluster/auth.go:
// "FMPEER1\n" and a 32-byte nonce).
const helloLen = 8 + 32

func newPeerProxy() *peerProxy {
	return &peerProxy{cut: map[string]bool{}, conns: map[*proxyConn]struct{}{}}
}

func (p *peerProxy) crosses(src, dst string) bool { return p.cut[src] != p.cut[dst] }

// partition cuts ids off from the others (none: heal).
func (p *peerProxy) partition(ids ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = map[string]bool{}
	for _, id := range ids {
		p.cut[id] = true
	}
	for c := range p.conns {
		if p.crosses(c.src, c.dst) {
			c.a.Close()
			c.b.Close()
			delete(p.conns, c)
		}
	}
}

// front listens for member dst and forwards to its real address.
func (p *peerProxy) front(t *testing.T, dst, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.lns = append(p.lns, ln)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.serve(dst, target, a) }()
		}
	}()
	return ln.Addr().String()
}

func (p *peerProxy) serve(dst, target string, a net.Conn) {
	b, err := net.DialTimeout("tcp", target, 2*time.Second)
	if err != nil {
		a.Close()
		return
	}
	fail := func() { a.Close(); b.Close() }
	_ = a.SetDeadline(time.Now().Add(5 * time.Second))
	_ = b.SetDeadline(time.Now().Add(5 * time.Second))
	hello := make([]byte, helloLen)
	if _, err := io.ReadFull(b, hello); err != nil {
		fail()
		return
	}
	if _, err := a.Write(hello); err != nil {
		fail()
		return
	}
	var n [1]byte
	if _, err := io.ReadFull(a, n[:]); err != nil {
		fail()
		return
	}
	id := make([]byte, n[0])
	if _, err := io.ReadFull(a, id); err != nil {
		fail()
		return
	}
	_ = a.SetDeadline(time.Time{})
	_ = b.SetDeadline(time.Time{})
	c := &proxyConn{src: string(id), dst: dst, a: a, b: b}
	p.mu.Lock()
	if p.closed || p.crosses(c.src, c.dst) {
		p.dropped++
		p.mu.Unlock()
		fail()
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	if _, err := b.Write(append(n[:], id...)); err != nil {
		fail()
	}
	done := make(chan struct{})
	go func() { io.Copy(b, a); b.Close(); close(done) }()
	io.Copy(a, b)
	a.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// close stops the proxy: listeners first, then every live connection.
func (p *peerProxy) close() {
	for _, ln := range p.lns {
		ln.Close()
	}
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.a.Close()
		c.b.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestClusterPartition: three real flashmemd processes whose Raft and peer
// traffic all goes through an in-test proxy. The leader, which owns a
// session persisted at durability cluster, is cut off: it refuses cluster
// PERSISTs and ownership moves with UNAVAILABLE; the majority elects a
// leader, moves the session to itself and persists new chunks; the cut-off
// node never commits as owner meanwhile (two owners are never observed).
// After healing, the old owner learns it is stale (NOT_OWNER), and a
// RESUME there brings back the majority's version.
func TestClusterPartition(t *testing.T) {
	start := time.Now()
	px := newPeerProxy()
	defer px.close()
	root := t.TempDir()
	secret := filepath.Join(root, "cluster.secret")
	if err := os.WriteFile(secret, []byte("partition-test-cluster-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var nodes []clusterNode
	var boot, extras []string
	for i := 1; i <= 3; i++ {
		n := clusterNode{id: fmt.Sprintf("n%d", i), raft: freePort(t), peer: freePort(t), dir: filepath.Join(root, fmt.Sprintf("n%d", i))}
		os.MkdirAll(n.dir, 0o755)
		ra, pa := px.front(t, n.id, n.raft), px.front(t, n.id, n.peer)
		nodes = append(nodes, n)
		boot = append(boot, n.id+"="+ra)
		extras = append(extras, fmt.Sprintf("raft_advertise = %q\npeer_advertise = %q\n", ra, pa))
	}
	procs := make([]*clusterProc, 3)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); procs[i] = startClusterDaemonExtra(t, nodes[i], boot, secret, extras[i]) }()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	st := waitCluster(t, dial(t, procs[0].socket), 3)
	lead := -1
	for i, n := range nodes {
		if n.id == st.Leader {
			lead = i
		}
	}
	if lead < 0 {
		t.Fatalf("leader %q is not a member", st.Leader)
	}
	ctx := context.Background()
	l := layout(24)
	r := rand.New(rand.NewPCG(11, 11))
	const seed, chunks = 31, 1024 // 16 pages
	cl := dial(t, procs[lead].socket)
	op, err := cl.Open(ctx, &proto.Open{Name: "split", Persist: true, Layout: l, Policy: proto.Policy{KMax: 8}})
	if err != nil {
		t.Fatal(err)
	}
	if err := appendChunks(cl, op.Session, &l, seed, 0, chunks, r); err != nil {
		t.Fatal(err)
	}
	if err := cl.PersistDurable(ctx, op.Session, proto.DurabilityCluster); err != nil {
		t.Fatal(err)
	}
	// The other two: one holds a replica, both form the majority.
	maj := []int{(lead + 1) % 3, (lead + 2) % 3}

	// Cut the leader (and owner) off.
	px.partition(nodes[lead].id)
	t0 := time.Now()
	err = cl.PersistDurable(ctx, op.Session, proto.DurabilityCluster)
	if proto.CodeOf(err) != proto.CodeUnavailable {
		t.Fatalf("cluster PERSIST on the minority side: %v, want UNAVAILABLE", err)
	}
	if !strings.Contains(err.Error(), "majority") && !strings.Contains(err.Error(), "leader") {
		t.Errorf("the minority's error does not say why: %v", err)
	}
	t.Logf("minority refused a cluster PERSIST within %v: %v", time.Since(t0).Round(time.Millisecond), err)
	// A new session cannot be claimed there either, and local durability
	// still works (the data path does not need the catalog).
	cn := dial(t, procs[lead].socket)
	opn, err := cn.Open(ctx, &proto.Open{Name: "minority-new", Persist: true, Layout: l, Policy: proto.Policy{KMax: 8}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cn.PersistDurable(ctx, opn.Session, proto.DurabilityLocal); err != nil {
		t.Fatalf("local PERSIST on the minority side: %v", err)
	}
	if err := cn.PersistDurable(ctx, opn.Session, proto.DurabilityCluster); proto.CodeOf(err) != proto.CodeUnavailable {
		t.Fatalf("cluster PERSIST of a new session on the minority side: %v, want UNAVAILABLE", err)
	}

	// The majority moves the session (an epoch bump) and persists more.
	cm := dial(t, procs[maj[0]].socket)
	var rr *proto.ResumeReply
	for t1 := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		if rr, err = cm.Resume(ctx, "split"); err == nil {
			break
		}
		if time.Since(t1) > 20*time.Second {
			t.Fatalf("RESUME on the majority side: %v", err)
		}
	}
	if rr.Chunks != chunks {
		t.Fatalf("the majority resumed %d chunks, want %d", rr.Chunks, chunks)
	}
	if err := appendChunks(cm, rr.Session, &l, seed, chunks, chunks+256, r); err != nil {
		t.Fatal(err)
	}
	if err := cm.PersistDurable(ctx, rr.Session, proto.DurabilityCluster); err != nil {
		t.Fatalf("cluster PERSIST on the majority side: %v", err)
	}
	t.Logf("majority moved and persisted the session %v after the cut", time.Since(t0).Round(time.Millisecond))

	// Two owners are never observed: the cut-off node, which still
	// believes it owns the session, cannot commit as its owner, and an
	// ownership move to it fails too.
	if err := cl.PersistDurable(ctx, op.Session, proto.DurabilityCluster); err == nil {
		t.Fatal("the cut-off old owner committed a cluster PERSIST while the majority owns the session")
	} else if c := proto.CodeOf(err); c != proto.CodeUnavailable && c != proto.CodeNotOwner {
		t.Fatalf("cluster PERSIST on the old owner: %v", err)
	}
	cr := dial(t, procs[lead].socket)
	if _, err := cr.Resume(ctx, "minority-moved"); proto.CodeOf(err) == proto.CodeOK {
		t.Fatal("RESUME of an unknown name succeeded on the minority")
	}
	if err := cl.CloseSession(ctx, op.Session, false); err != nil {
		t.Logf("close on the old owner: %v", err)
	}
	if _, err := cr.Resume(ctx, "split"); proto.CodeOf(err) != proto.CodeUnavailable {
		t.Fatalf("ownership move to the minority side: %v, want UNAVAILABLE", err)
	}

	// Heal: the old owner catches up (its catalog names the majority's
	// owner at the new epoch), and a RESUME there moves the session back
	// with the majority's chunks.
	px.partition()
	var out string
	for t2 := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		out, err = runCtl(procs[lead].socket, "--json", "cluster", "status")
		var s proto.ClusterReply
		if err == nil && json.Unmarshal([]byte(out), &s) == nil && s.Leader != "" && s.AppliedIndex >= s.CommitIndex && s.CommitIndex > 0 {
			if rb, err := cr.Resume(ctx, "split"); err == nil {
				if rb.Chunks != chunks+256 {
					t.Fatalf("after healing the old owner resumed %d chunks, want the majority's %d", rb.Chunks, chunks+256)
				}
				break
			}
		}
		if time.Since(t2) > 20*time.Second {
			t.Fatalf("the healed node did not catch up: %v\n%s", err, out)
		}
	}
	// The majority's handle is stale now.
	if err := appendChunks(cm, rr.Session, &l, seed, chunks+256, chunks+320, r); proto.CodeOf(err) != proto.CodeNotOwner && proto.CodeOf(err) != proto.CodeUnknownSession {
		t.Fatalf("append on the majority's handle after the session moved back: %v", err)
	}
	px.mu.Lock()
	t.Logf("partition test: %v, %d crossing connections dropped", time.Since(start).Round(time.Millisecond), px.dropped)
	px.mu.Unlock()
}
