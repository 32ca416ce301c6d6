package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// partitionProxy stands in front of every node's Raft and peer ports. It
// reads the client's node id from the handshake and drops connections that
// cross the partition (cut nodes on one side, the others on the other).
type partitionProxy struct {
	mu    sync.Mutex
	cut   map[string]bool
	conns map[*proxied]struct{}
	lns   []net.Listener
	wg    sync.WaitGroup
}

type proxied struct {
	src, dst string
	a, b     net.Conn
}

func (p *partitionProxy) crosses(src, dst string) bool { return p.cut[src] != p.cut[dst] }

// partition cuts ids off from the rest (none: heal) and closes the
// connections that now cross.
func (p *partitionProxy) partition(ids ...string) {
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

// front listens for node dst and forwards to target.
func (p *partitionProxy) front(t *testing.T, dst, target string) string {
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
			go p.serve(dst, target, a)
		}
	}()
	return ln.Addr().String()
}

func (p *partitionProxy) serve(dst, target string, a net.Conn) {
	b, err := net.Dial("tcp", target)
	if err != nil {
		a.Close()
		return
	}
	// Server hello to the client, then the client's id.
	hello := make([]byte, len(authMagic)+nonceLen)
	if _, err := io.ReadFull(b, hello); err != nil {
		a.Close()
		b.Close()
		return
	}
	a.Write(hello)
	var n [1]byte
	if _, err := io.ReadFull(a, n[:]); err != nil {
		a.Close()
		b.Close()
		return
	}
	id := make([]byte, n[0])
	if _, err := io.ReadFull(a, id); err != nil {
		a.Close()
		b.Close()
		return
	}
	c := &proxied{src: string(id), dst: dst, a: a, b: b}
	p.mu.Lock()
	if p.crosses(c.src, c.dst) {
		p.mu.Unlock()
		a.Close()
		b.Close()
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	b.Write(append(n[:], id...))
	go func() { io.Copy(b, a); b.Close() }()
	io.Copy(a, b)
	a.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *partitionProxy) close() {
	for _, ln := range p.lns {
		ln.Close()
	}
	p.partition("all-cut-for-close")
	p.wg.Wait()
}

// TestPartition: the node cut off (the leader) refuses catalog changes
// with ErrNoQuorum; the majority elects a leader, moves the session and
// persists it; the session never has two owners that both commit; after
// healing the cut node catches up and finds its epoch stale.
func TestPartition(t *testing.T) {
	px := &partitionProxy{cut: map[string]bool{}, conns: map[*proxied]struct{}{}}
	defer px.close()
	root := t.TempDir()
	var cfgs []Config
	var boot []string
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("n%d", i)
		c := Config{NodeID: id, RaftAddr: freeAddr(t), PeerAddr: freeAddr(t), Dir: filepath.Join(root, id, "raft"),
			ReplicationFactor: 2, Secret: testSecret, Logger: testLogger(t), DownAfter: 1500 * time.Millisecond, RaftLogLevel: "off"}
		c.RaftAdvertise = px.front(t, id, c.RaftAddr)
		c.PeerAdvertise = px.front(t, id, c.PeerAddr)
		boot = append(boot, id+"="+c.RaftAdvertise)
		cfgs = append(cfgs, c)
	}
	tc := &testCluster{t: t, nodes: make([]*Node, 3)}
	for i := range cfgs {
		cfgs[i].Bootstrap = boot
		tc.cfgs = append(tc.cfgs, cfgs[i])
		tc.stores = append(tc.stores, &dirStore{dir: filepath.Join(root, cfgs[i].NodeID, "store")})
	}
	for i := range 3 {
		tc.start(i)
	}
	defer func() {
		for _, n := range tc.nodes {
			n.Close()
		}
	}()
	ctx := context.Background()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for _, n := range tc.nodes {
		if err := n.WaitLeader(wctx); err != nil {
			t.Fatal(err)
		}
	}
	tc.waitMembers(3)
	tc.waitAlive(0, "n1", "n2", "n3")
	leader := -1
	for i, n := range tc.nodes {
		if n.IsLeader() {
			leader = i
		}
	}
	lead := tc.nodes[leader]
	tc.stores[leader].put("s", randPages(3, 4, 8000), []uint64{1, 1, 1, 1}, "v1")
	s, err := lead.Claim(ctx, "s", 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	res, err := lead.Persist(ctx, SessionInfo{Name: "s"}, s.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	replica := map[string]int{"n1": 0, "n2": 1, "n3": 2}[res.Replicas[1]]

	px.partition(lead.ID())
	t0 := time.Now()
	_, err = lead.Claim(ctx, "new-on-minority", 1, 1)
	if !errors.Is(err, ErrNoQuorum) || !strings.Contains(err.Error(), "majority") {
		t.Fatalf("claim on the minority side: %v", err)
	}
	if _, err := lead.Persist(ctx, SessionInfo{Name: "s"}, s.Epoch); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("persist on the minority side: %v", err)
	}
	t.Logf("minority refused within %v", time.Since(t0).Round(time.Millisecond))

	// The majority moves the session to the replica and persists there.
	maj := tc.nodes[replica]
	var ar *AcquireResult
	for t1 := time.Now(); time.Since(t1) < 15*time.Second; time.Sleep(100 * time.Millisecond) {
		if ar, err = maj.Acquire(ctx, "s"); err == nil {
			break
		}
	}
	if err != nil || ar.Epoch != 2 {
		t.Fatalf("acquire on the majority: %+v %v", ar, err)
	}
	tc.stores[replica].put("s", randPages(4, 5, 8000), []uint64{2, 2, 2, 2, 2}, "v2")
	if _, err := maj.Persist(ctx, SessionInfo{Name: "s"}, ar.Epoch); err != nil {
		t.Fatalf("persist on the majority: %v", err)
	}
	// The old leader still believes it owns s at epoch 1 (it cannot hear
	// otherwise) but cannot commit: one owner only.
	if err := lead.CheckOwner("s", 1); err != nil {
		t.Logf("minority already knows: %v", err)
	}
	if _, err := lead.Persist(ctx, SessionInfo{Name: "s"}, 1); err == nil {
		t.Fatal("the minority's stale owner committed a persist")
	}

	px.partition()
	for t2 := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		if err := lead.CheckOwner("s", 1); errors.Is(err, ErrStaleEpoch) {
			got, _ := lead.Catalog().Session("s")
			if got.Owner != maj.ID() || got.Version != 2 {
				t.Fatalf("healed node's catalog: %+v", got)
			}
			break
		}
		if time.Since(t2) > 15*time.Second {
			t.Fatal("the healed node did not catch up")
		}
	}
	if _, err := lead.Persist(ctx, SessionInfo{Name: "s"}, 1); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("persist at the old epoch after healing: %v", err)
	}
}
