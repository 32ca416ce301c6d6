package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/internal/ctl"
	"github.com/flashmemory/flashmemory/proto"
)

// clusterBaseConfig is what cluster daemons run with besides [cluster]
// (the benchmark raises the host budget).
var clusterBaseConfig = testConfig

// clusterProc is one flashmemd of a test cluster; its log is guarded
// because the reader goroutine appends while the test may print it.
type clusterProc struct {
	cmd     *exec.Cmd
	socket  string
	metrics string // host:port of /metrics
	mu      sync.Mutex
	log     strings.Builder
	exited  chan error
}

func (p *clusterProc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// freePort returns a loopback address nothing listens on, never the same
// one twice in this test process: the port is released before the daemon
// binds it, so without the record two nodes of one cluster could be handed
// the same port (Raft then refuses the duplicate address).
func freePort(t *testing.T) string {
	t.Helper()
	handedMu.Lock()
	defer handedMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		if !handed[addr] {
			handed[addr] = true
			return addr
		}
	}
	t.Fatal("no fresh loopback port in 100 tries")
	return ""
}

var (
	handedMu sync.Mutex
	handed   = map[string]bool{}
)

type clusterNode struct {
	id, raft, peer, dir string
}

// startClusterDaemon starts the real binary with testConfig plus a
// [cluster] table.
func startClusterDaemon(t *testing.T, n clusterNode, boot []string, secretFile string) *clusterProc {
	t.Helper()
	return startClusterDaemonExtra(t, n, boot, secretFile, "")
}

// startClusterDaemonExtra adds lines to the [cluster] table.
func startClusterDaemonExtra(t *testing.T, n clusterNode, boot []string, secretFile, extra string) *clusterProc {
	t.Helper()
	cfg := clusterBaseConfig + fmt.Sprintf(`
[cluster]
node_id = %q
raft_addr = %q
peer_addr = %q
bootstrap = [%s]
replication_factor = 2
secret_file = %q
down_after = "2s"
`, n.id, n.raft, n.peer, `"`+strings.Join(boot, `", "`)+`"`, secretFile) + extra
	cfgPath := filepath.Join(n.dir, "flashmemd.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &clusterProc{socket: filepath.Join(n.dir, "fm.sock"), metrics: freePort(t), exited: make(chan error, 1)}
	p.cmd = exec.Command(binary, "--config", cfgPath, "--socket", p.socket, "--data-dir", filepath.Join(n.dir, "data"), "--metrics", p.metrics)
	p.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=")
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		once := false
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if !once && strings.Contains(sc.Text(), "msg=serving") {
				once = true
				close(ready)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() { err := p.cmd.Wait(); pw.Close(); p.exited <- err }()
	select {
	case <-ready:
	case err := <-p.exited:
		t.Fatalf("flashmemd %s exited at start: %v\n%s", n.id, err, p.logText())
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		t.Fatalf("flashmemd %s did not start\n%s", n.id, p.logText())
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("flashmemd %s log:\n%s", n.id, p.logText())
		}
	})
	return p
}

// waitCluster polls CLUSTER status until a leader is known and every
// member answers pings.
func waitCluster(t *testing.T, c *proto.Client, members int) *proto.ClusterReply {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last *proto.ClusterReply
	for time.Now().Before(deadline) {
		r, err := c.Cluster(context.Background(), proto.ClusterRequest{Action: "status"})
		if err == nil {
			last = r
			alive := 0
			for _, m := range r.Members {
				if m.State == "alive" || m.State == "leader" {
					alive++
				}
			}
			if r.Leader != "" && alive == members {
				return r
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("cluster did not form: %+v", last)
	return nil
}

func pageNumbers(ps []proto.PageSlot) []uint32 {
	out := make([]uint32, len(ps))
	for i, p := range ps {
		out[i] = p.Page
	}
	slices.Sort(out)
	return out
}

// runCtl runs flashmemctl's command tree in process against socket.
func runCtl(socket string, args ...string) (string, error) {
	var out, errw strings.Builder
	cmd := ctl.Command(&out, &errw)
	cmd.SetArgs(append([]string{"--socket", socket}, args...))
	err := cmd.Execute()
	return out.String() + errw.String(), err
}

// startTestCluster starts three cluster daemons on loopback.
func startTestCluster(t *testing.T) ([]*clusterProc, []clusterNode) {
	t.Helper()
	return startTestClusterExtra(t, "")
}

// startTestClusterExtra adds lines to every member's [cluster] table.
func startTestClusterExtra(t *testing.T, extra string) ([]*clusterProc, []clusterNode) {
	t.Helper()
	root := t.TempDir()
	secret := filepath.Join(root, "cluster.secret")
	if err := os.WriteFile(secret, []byte("integration-test-cluster-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var nodes []clusterNode
	var boot []string
	for i := 1; i <= 3; i++ {
		n := clusterNode{id: fmt.Sprintf("n%d", i), raft: freePort(t), peer: freePort(t), dir: filepath.Join(root, fmt.Sprintf("n%d", i))}
		os.MkdirAll(n.dir, 0o755)
		nodes = append(nodes, n)
		boot = append(boot, n.id+"="+n.raft)
	}
	procs := make([]*clusterProc, 3)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); procs[i] = startClusterDaemonExtra(t, nodes[i], boot, secret, extra) }()
	}
	wg.Wait()
	return procs, nodes
}

// TestClusterSelfHealingRead: pages damaged on the owner's SSD are fetched
// from a replica when a CYCLE recalls them; the decoder gets intact bytes
// and no damaged pages.
func TestClusterSelfHealingRead(t *testing.T) {
	procs, nodes := startTestCluster(t)
	if t.Failed() {
		return
	}
	c1 := dial(t, procs[0].socket)
	waitCluster(t, c1, 3)
	ctx := context.Background()
	l := layout(24)
	const seed, chunks = 31, 8192 // 128 pages, 24 reserve slots
	op, err := c1.Open(ctx, &proto.Open{Name: "heal", Persist: true, Layout: l, Policy: proto.Policy{KMax: 8}})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(8, 8))
	if err := appendChunks(c1, op.Session, &l, seed, 0, chunks, r); err != nil {
		t.Fatal(err)
	}
	if err := c1.PersistDurable(ctx, op.Session, proto.DurabilityCluster); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Evict(ctx, proto.AdminTarget{Name: "heal"}); err != nil {
		t.Fatal(err)
	}
	// Damage every page body in node 1's segments: one byte in the middle
	// of every 4 KiB block.
	segs, _ := filepath.Glob(filepath.Join(nodes[0].dir, "data", "ssd", "pages", "*.seg"))
	if len(segs) == 0 {
		t.Fatal("no segment files")
	}
	for _, f := range segs {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for off := 2048; off < len(b); off += 4096 {
			b[off] ^= 0x5A
		}
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mem, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	served := 0
	for i := 0; i < 6; i++ {
		res, err := c1.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: chunks * 4, Queries: hidden(r)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("cycle %d: %v %v", i, err, res[0].Err)
		}
		if len(res[0].Damaged) > 0 {
			t.Fatalf("cycle %d: damaged pages %v", i, res[0].Damaged)
		}
		verify(t, &l, &op.Region.RegionDesc, mem, seed, chunks, res[0].Pages)
		served += len(res[0].Pages)
		c1.Release(ctx, res[0].Lease)
	}
	if n := strings.Count(procs[0].logText(), "damaged page healed from a replica"); n == 0 {
		t.Fatalf("no page was healed (%d pages served)", served)
	} else {
		t.Logf("%d pages healed from replicas, %d served", n, served)
	}
}

// TestClusterSurvivesSIGKILL is issue #10's acceptance test: three real
// flashmemd processes on loopback form a cluster; a session persisted at
// durability cluster on node 1 outlives node 1's SIGKILL: VERIFY on node 2
// finds every page intact (pulling what node 2 lacks), and the next CYCLE
// on node 2 returns the page table node 1 returned for the same query.
func TestClusterSurvivesSIGKILL(t *testing.T) {
	procs, _ := startTestCluster(t)
	if t.Failed() {
		return
	}
	c1 := dial(t, procs[0].socket)
	waitCluster(t, c1, 3)

	ctx := context.Background()
	l := layout(96)
	const seed, chunks = 4242, 4096 // 16K tokens, 64 pages
	op, err := c1.Open(ctx, &proto.Open{Name: "clustered", Persist: true, Layout: l, Policy: proto.Policy{KMax: 16}})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 5))
	if err := appendChunks(c1, op.Session, &l, seed, 0, chunks, r); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		res, err := c1.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: chunks * 4, Queries: hidden(r)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("cycle %d: %v %v", i, err, res[0].Err)
		}
		c1.Release(ctx, res[0].Lease)
	}
	t0 := time.Now()
	if err := c1.PersistDurable(ctx, op.Session, proto.DurabilityCluster); err != nil {
		t.Fatal(err)
	}
	t.Logf("PERSIST at durability cluster: %v", time.Since(t0))
	// What node 1 answers next, for two fixed queries.
	qr := rand.New(rand.NewPCG(77, 77))
	queries := [][][]byte{hidden(qr), hidden(qr)}
	var want [][]uint32
	for _, q := range queries {
		res, err := c1.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: chunks * 4, Queries: q}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("reference cycle: %v %v", err, res[0].Err)
		}
		want = append(want, pageNumbers(res[0].Pages))
		c1.Release(ctx, res[0].Lease)
	}

	// SIGKILL node 1: no shutdown flush, no goodbye.
	procs[0].cmd.Process.Signal(syscall.SIGKILL)
	<-procs[0].exited

	c2 := dial(t, procs[1].socket)
	// flashmemctl verify on node 2 (the real command, in process).
	out, err := runCtl(procs[1].socket, "--json", "--timeout", "60s", "verify", "clustered")
	if err != nil {
		t.Fatalf("flashmemctl verify: %v\n%s", err, out)
	}
	var v proto.VerifyReply
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("verify output: %v\n%s", err, out)
	}
	if v.Cluster == nil || v.Bad != 0 || v.Cluster.Bad != 0 || v.Cluster.Verified != v.Cluster.Manifest || v.Cluster.Manifest != chunks/64 ||
		v.Verified != v.Pages || v.Pages != chunks/64 {
		t.Fatalf("verify on node 2: %+v cluster %+v", v, v.Cluster)
	}
	t.Logf("verify on n2: %d pages verified, %d pulled, epoch %d", v.Cluster.Verified, v.Cluster.Pulled, v.Cluster.Epoch)

	rr, err := c2.Resume(ctx, "clustered")
	if err != nil {
		t.Fatal(err)
	}
	if rr.Chunks != chunks {
		t.Fatalf("resumed %d chunks, want %d", rr.Chunks, chunks)
	}
	mem, err := rr.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	for i, q := range queries {
		res, err := c2.Cycle(ctx, []proto.CycleEntry{{Session: rr.Session, Position: chunks * 4, Queries: q}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("cycle on node 2: %v %v", err, res[0].Err)
		}
		if got := pageNumbers(res[0].Pages); !slices.Equal(got, want[i]) {
			t.Fatalf("cycle %d on node 2 returned pages %v, node 1 returned %v", i, got, want[i])
		}
		verify(t, &l, &rr.Region.RegionDesc, mem, seed, chunks, res[0].Pages)
		c2.Release(ctx, res[0].Lease)
	}
	// Node 3 takes the session over (an epoch bump through Raft, pulling
	// what it lacks); node 2, now stale, refuses to append to it.
	c3 := dial(t, procs[2].socket)
	r3, err := c3.Resume(ctx, "clustered")
	if err != nil {
		t.Fatal(err)
	}
	if r3.Chunks != chunks {
		t.Fatalf("node 3 resumed %d chunks", r3.Chunks)
	}
	err = appendChunks(c2, rr.Session, &l, seed, chunks, chunks+64, r)
	if proto.CodeOf(err) != proto.CodeNotOwner && proto.CodeOf(err) != proto.CodeUnknownSession {
		t.Fatalf("append on the stale owner: %v", err)
	}
	out, err = runCtl(procs[1].socket, "--json", "cluster", "status")
	if err != nil {
		t.Fatalf("flashmemctl cluster status: %v\n%s", err, out)
	}
	var st proto.ClusterReply
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Leader == "" || len(st.Members) != 3 {
		t.Fatalf("cluster status: %v\n%s", err, out)
	}
	for _, m := range st.Members {
		if m.ID == "n1" && m.State != "down" && m.State != "unknown" {
			t.Logf("n1 still %s (its last contact %s)", m.State, m.LastContact)
		}
	}
	// Raft and replication metrics on node 2.
	resp, err := http.Get("http://" + procs[1].metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"flashmem_cluster_leader ", "flashmem_cluster_term ", "flashmem_cluster_commit_seconds{quantile=\"0.99\"}",
		"flashmem_cluster_replication_lag_seconds ", "flashmem_cluster_replication_bytes_total{dir=\"received\"}", "flashmem_cluster_members{state=\"alive\"}"} {
		if !strings.Contains(string(body), name) {
			t.Fatalf("/metrics lacks %s", name)
		}
	}
	// Node 2 got the pages either as a replica or by pulling them.
	if strings.Contains(string(body), "flashmem_cluster_replication_bytes_total{dir=\"received\"} 0\n") &&
		strings.Contains(string(body), "flashmem_cluster_pulled_pages_total 0\n") {
		t.Fatal("node 2 neither received nor pulled any page")
	}
	t.Logf("after the kill: leader %s term %d, under-replicated %v", st.Leader, st.Term, st.UnderReplicated)
}

// DELETE (flashmemctl delete) of a session persisted at durability cluster
// removes it from the cluster too, live or on SSD only: RESUME on another
// node must not bring it back from a replica.
func TestClusterDeleteRemovesEverywhere(t *testing.T) {
	// Replicas ack once pages are written (the deferred sync runs while
	// the deletes remove them).
	procs, _ := startTestClusterExtra(t, "replica_sync = \"write\"\n")
	if t.Failed() {
		return
	}
	c1 := dial(t, procs[0].socket)
	waitCluster(t, c1, 3)
	c2 := dial(t, procs[1].socket)
	ctx := context.Background()
	l := layout(24)
	r := rand.New(rand.NewPCG(9, 9))
	for _, name := range []string{"gone-live", "gone-ssd"} {
		dec := dial(t, procs[0].socket)
		op, err := dec.Open(ctx, &proto.Open{Name: name, Persist: true, Layout: l, Policy: proto.Policy{KMax: 8}})
		if err != nil {
			t.Fatal(err)
		}
		op.Region.Close()
		if err := appendChunks(dec, op.Session, &l, 3, 0, 256, r); err != nil {
			t.Fatal(err)
		}
		if err := dec.PersistDurable(ctx, op.Session, proto.DurabilityCluster); err != nil {
			t.Fatal(err)
		}
		// Detached in memory ("gone-live": its connection ended) or on SSD
		// only ("gone-ssd": CLOSE without delete).
		if name == "gone-ssd" {
			if err := dec.CloseSession(ctx, op.Session, false); err != nil {
				t.Fatal(err)
			}
		}
		dec.Close()
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := c1.Delete(ctx, proto.AdminTarget{Name: name})
			if err == nil {
				break
			}
			if proto.CodeOf(err) != proto.CodeNotOwner || time.Now().After(deadline) {
				t.Fatalf("DELETE %s: %v", name, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := c2.Resume(ctx, name); proto.CodeOf(err) != proto.CodeUnknownSession {
			t.Errorf("RESUME of deleted %s on another node: %v, want UNKNOWN_SESSION", name, err)
		}
	}
}

// TestClusterDemo: `flashmemctl demo --keep --durability cluster` on node 1
// persists the demo session at cluster durability; `flashmemctl verify
// demo` on node 2 then finds every page of it intact (pulling what node 2
// lacks).
func TestClusterDemo(t *testing.T) {
	// The demo's model, as flashmemd registers it without a configuration.
	clusterBaseConfig = testConfig + `[[indexer.random]]
name = "demo"
seed = 1
hidden = 512
rank = 128
heads = 16
head_dim = 128
target_layers = 3
`
	defer func() { clusterBaseConfig = testConfig }()
	procs, _ := startTestCluster(t)
	if t.Failed() {
		return
	}
	waitCluster(t, dial(t, procs[0].socket), 3)
	out, err := runCtl(procs[0].socket, "--timeout", "120s", "demo", "--keep", "--durability", "cluster", "--tokens", "16384", "--layers", "1", "--cycles", "2")
	if err != nil {
		t.Fatalf("flashmemctl demo --durability cluster: %v\n%s", err, out)
	}
	if !strings.Contains(out, `session "demo" persisted at durability cluster`) {
		t.Fatalf("demo output does not report the cluster PERSIST:\n%s", out)
	}
	out, err = runCtl(procs[1].socket, "--json", "--timeout", "60s", "verify", "demo")
	if err != nil {
		t.Fatalf("flashmemctl verify demo on n2: %v\n%s", err, out)
	}
	var v proto.VerifyReply
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("verify output: %v\n%s", err, out)
	}
	// 16,384 tokens = 4,096 chunks = 64 pages, and the decoded steps' chunks.
	if v.Cluster == nil || v.Cluster.Manifest < 64 || v.Cluster.Verified != v.Cluster.Manifest || v.Cluster.Bad != 0 || v.Bad != 0 || v.Verified != v.Pages {
		t.Fatalf("verify demo on n2: %+v cluster %+v", v, v.Cluster)
	}
	t.Logf("demo persisted at cluster durability on n1; n2 verified %d pages (%d pulled)", v.Cluster.Verified, v.Cluster.Pulled)
}

// TestClusterMetadataDelta: after the first cluster PERSIST, the replica
// gets each later PERSIST's metadata as a delta from the version it holds
// (checked there: the merged result must be the owner's version, else the
// owner sends it whole and the counter does not move); with the owner
// SIGKILLed, the replica's copy verifies and resumes with every chunk.
func TestClusterMetadataDelta(t *testing.T) {
	procs, _ := startTestCluster(t)
	if t.Failed() {
		return
	}
	c1 := dial(t, procs[0].socket)
	waitCluster(t, c1, 3)
	ctx := context.Background()
	l := layout(24)
	r := rand.New(rand.NewPCG(8, 8))
	op, err := c1.Open(ctx, &proto.Open{Name: "deltas", Persist: true, Layout: l, Policy: proto.Policy{KMax: 8}})
	if err != nil {
		t.Fatal(err)
	}
	const seed = 5
	chunks := uint64(1024)
	if err := appendChunks(c1, op.Session, &l, seed, 0, chunks, r); err != nil {
		t.Fatal(err)
	}
	if err := c1.PersistDurable(ctx, op.Session, proto.DurabilityCluster); err != nil {
		t.Fatal(err)
	}
	for step := range 3 {
		if err := appendChunks(c1, op.Session, &l, seed, chunks, chunks+64, r); err != nil {
			t.Fatal(err)
		}
		chunks += 64
		if err := c1.PersistDurable(ctx, op.Session, proto.DurabilityCluster); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
	}
	if got := scrapeMetric(t, procs[0].metrics, "flashmem_cluster_metadata_deltas_total"); got != 3 {
		t.Fatalf("metadata deltas sent: %v, want 3 (one per PERSIST after the first)", got)
	}
	procs[0].cmd.Process.Signal(syscall.SIGKILL)
	<-procs[0].exited
	for i := 1; i < 3; i++ {
		out, err := runCtl(procs[i].socket, "--json", "--timeout", "60s", "verify", "deltas")
		if err != nil {
			t.Fatalf("verify on n%d: %v\n%s", i+1, err, out)
		}
		var v proto.VerifyReply
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("verify output: %v\n%s", err, out)
		}
		if v.Cluster == nil || v.Cluster.Bad != 0 || v.Bad != 0 || v.Cluster.Verified != v.Cluster.Manifest || v.Verified != v.Pages {
			t.Fatalf("verify on n%d: %+v %+v", i+1, v, v.Cluster)
		}
	}
	c3 := dial(t, procs[2].socket)
	rr, err := c3.Resume(ctx, "deltas")
	if err != nil {
		t.Fatal(err)
	}
	if rr.Chunks != chunks {
		t.Fatalf("resumed %d chunks, want %d", rr.Chunks, chunks)
	}
}
