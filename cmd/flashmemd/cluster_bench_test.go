package main_test

import (
	"context"
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

// TestClusterBenchmark measures, on three real daemons over loopback, what
// docs/benchmarks.md reports for the cluster: local vs cluster PERSIST of a
// 512K-token session, the replication rate against a plain TCP copy of the
// same bytes, and RESUME of the session on a node that holds none of it.
// Run with FLASHMEM_CLUSTER_BENCH=1 (it moves ~0.3 GB per step).
func TestClusterBenchmark(t *testing.T) {
	if os.Getenv("FLASHMEM_CLUSTER_BENCH") == "" {
		t.Skip("set FLASHMEM_CLUSTER_BENCH=1")
	}
	clusterBaseConfig = strings.Replace(testConfig, "budget_bytes = 268435456", "budget_bytes = 1073741824", 1)
	defer func() { clusterBaseConfig = testConfig }()
	root := t.TempDir()
	secret := filepath.Join(root, "cluster.secret")
	os.WriteFile(secret, []byte("benchmark-cluster-secret-0123456789"), 0o600)
	var nodes []clusterNode
	var boot []string
	for i := 1; i <= 3; i++ {
		n := clusterNode{id: fmt.Sprintf("n%d", i), raft: freePort(t), peer: freePort(t), dir: filepath.Join(root, fmt.Sprintf("n%d", i))}
		os.MkdirAll(n.dir, 0o755)
		nodes = append(nodes, n)
		boot = append(boot, n.id+"="+n.raft)
	}
	procs := make([]*clusterProc, 3)
	for i := range nodes {
		procs[i] = startClusterDaemon(t, nodes[i], boot, secret)
	}
	c1 := dial(t, procs[0].socket)
	waitCluster(t, c1, 3)
	ctx := context.Background()
	// DeepSeek-V4 rows (37,440 B) for 4 layers: 150 KB per 64-chunk page.
	l := proto.Layout{ChunksPerPage: 64, KeyBytes: 132, TargetLayers: 3, CycleSteps: 64, ReserveSlots: 256}
	for range 4 {
		l.Layers = append(l.Layers, proto.LayerLayout{RowBytes: 37440, Segments: []uint32{576, 8}})
	}
	const chunks = 131072 // 512K tokens at 4 per chunk
	op, err := c1.Open(ctx, &proto.Open{Name: "bench", Persist: true, Layout: l, Policy: proto.Policy{KMax: 64}})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	t0 := time.Now()
	if err := appendChunks(c1, op.Session, &l, 7, 0, chunks, r); err != nil {
		t.Fatal(err)
	}
	pages := chunks / 64
	bytes := int64(pages) * int64(l.PageBytes())
	t.Logf("appended %d chunks (%d pages, %.2f GB) in %v", chunks, pages, float64(bytes)/1e9, time.Since(t0))
	t0 = time.Now()
	if err := c1.PersistDurable(ctx, op.Session, proto.DurabilityLocal); err != nil {
		t.Fatal(err)
	}
	local := time.Since(t0)
	t0 = time.Now()
	if err := c1.PersistDurable(ctx, op.Session, proto.DurabilityCluster); err != nil {
		t.Fatal(err)
	}
	cluster := time.Since(t0)
	// A second cluster PERSIST with nothing changed: the fixed cost.
	t0 = time.Now()
	if err := c1.PersistDurable(ctx, op.Session, proto.DurabilityCluster); err != nil {
		t.Fatal(err)
	}
	again := time.Since(t0)
	t0 = time.Now()
	if err := c1.PersistDurable(ctx, op.Session, proto.DurabilityLocal); err != nil {
		t.Fatal(err)
	}
	localAgain := time.Since(t0)
	tcp := plainTCPCopy(t, bytes, "")
	// The same copy with the receiver writing into a file on the disk the
	// replica uses and syncing every 8 MiB (the replica's batch): the
	// bound this machine's disk sets for a durable copy.
	synced := plainTCPCopy(t, bytes, nodes[1].dir)
	t.Logf("PERSIST local (flush to SSD): %v; cluster (all pages to one replica, synced there): %v = %.2f GB/s; plain TCP copy of the same bytes over loopback: %v = %.2f GB/s; ratio %.2f",
		local, cluster, float64(bytes)/cluster.Seconds()/1e9, tcp, float64(bytes)/tcp.Seconds()/1e9, tcp.Seconds()/cluster.Seconds())
	t.Logf("TCP copy into a file on the replica's disk, fsync every 8 MiB: %v = %.2f GB/s; ratio cluster/that %.2f",
		synced, float64(bytes)/synced.Seconds()/1e9, synced.Seconds()/cluster.Seconds())
	t.Logf("unchanged session: PERSIST local %v, cluster %v", localAgain, again)
	st, err := c1.Cluster(ctx, proto.ClusterRequest{Action: "status"})
	if err != nil {
		t.Fatal(err)
	}
	// Resume on the node that is not a replica: every page is pulled.
	v, err := c1.Verify(ctx, proto.AdminTarget{Name: "bench"})
	if err != nil {
		t.Fatal(err)
	}
	_ = v
	c1.CloseSession(ctx, op.Session, false)
	var target int
	for i := 1; i < 3; i++ {
		cl := dial(t, procs[i].socket)
		ss, err := cl.Sessions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ss.Sessions) == 0 {
			target = i
		}
	}
	if target == 0 {
		t.Fatalf("both other nodes hold the session: %+v", st)
	}
	ct := dial(t, procs[target].socket)
	t0 = time.Now()
	rr, err := ct.Resume(ctx, "bench")
	if err != nil {
		t.Fatal(err)
	}
	res := time.Since(t0)
	t.Logf("RESUME of the 512K-token session on %s (no local copy): %v = %.2f GB/s (%d chunks)", nodes[target].id, res, float64(bytes)/res.Seconds()/1e9, rr.Chunks)
}

// plainTCPCopy sends n bytes over a loopback TCP connection in 16 MiB
// writes, as a baseline for the peer port. With dir set, the receiver
// writes them into a file there and fsyncs every 8 MiB and at the end.
func plainTCPCopy(t *testing.T, n int64, dir string) time.Duration {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if dir == "" {
			io.Copy(io.Discard, c)
			return
		}
		f, err := os.CreateTemp(dir, "tcp-baseline-*")
		if err != nil {
			t.Error(err)
			return
		}
		defer os.Remove(f.Name())
		defer f.Close()
		for {
			m, err := io.CopyN(f, c, 8<<20)
			if m > 0 {
				if err := f.Sync(); err != nil {
					t.Error(err)
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16<<20)
	t0 := time.Now()
	for sent := int64(0); sent < n; sent += int64(len(buf)) {
		if _, err := c.Write(buf[:min(int64(len(buf)), n-sent)]); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	wg.Wait()
	return time.Since(t0)
}
