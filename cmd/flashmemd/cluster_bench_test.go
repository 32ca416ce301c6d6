package main_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
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
	// Both replica sync modes in one run, each on a fresh cluster;
	// FLASHMEM_CLUSTER_BENCH_EXTRA adds [cluster] lines to every member
	// (say "replication_streams = 8"), FLASHMEM_CLUSTER_BENCH_MODES picks
	// the modes ("fsync,write").
	modes := []string{"fsync", "write"}
	if v := os.Getenv("FLASHMEM_CLUSTER_BENCH_MODES"); v != "" {
		modes = strings.Split(v, ",")
	}
	extra := strings.ReplaceAll(os.Getenv("FLASHMEM_CLUSTER_BENCH_EXTRA"), ";", "\n")
	if extra != "" {
		t.Logf("members' [cluster] also has: %s", strings.ReplaceAll(extra, "\n", "; "))
	}
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) { benchClusterMode(t, mode, extra) })
	}
}

func benchClusterMode(t *testing.T, mode, extra string) {
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
		procs[i] = startClusterDaemonExtra(t, nodes[i], boot, secret, fmt.Sprintf("replica_sync = %q\n%s\n", mode, extra))
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
	t.Logf("[%s] appended %d chunks (%d pages, %.2f GB) in %v", mode, chunks, pages, float64(bytes)/1e9, time.Since(t0))
	t0 = time.Now()
	if err := c1.PersistDurable(ctx, op.Session, proto.DurabilityLocal); err != nil {
		t.Fatal(err)
	}
	local := time.Since(t0)
	sent0 := scrapeMetric(t, procs[0].metrics, `flashmem_cluster_replication_bytes_total{dir="sent"}`)
	t0 = time.Now()
	if err := c1.PersistDurable(ctx, op.Session, proto.DurabilityCluster); err != nil {
		t.Fatal(err)
	}
	cluster := time.Since(t0)
	// The replication phase alone (Node.Persist: assign, stream pages and
	// metadata, commit), without the local PERSIST a cluster PERSIST starts
	// with, and the bytes it moved (pages and the metadata blob).
	repl := time.Duration(scrapeMetric(t, procs[0].metrics, "flashmem_cluster_replication_lag_seconds") * float64(time.Second))
	moved := int64(scrapeMetric(t, procs[0].metrics, `flashmem_cluster_replication_bytes_total{dir="sent"}`) - sent0)
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
	// Steady state in decode: 64 more chunks (one new page and the indexer
	// state's keys for them), then PERSIST; local, then cluster.
	step := func(d proto.Durability, from uint64) time.Duration {
		if err := appendChunks(c1, op.Session, &l, 7, from, from+64, r); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if err := c1.PersistDurable(ctx, op.Session, d); err != nil {
			t.Fatal(err)
		}
		return time.Since(t0)
	}
	stepLocal := step(proto.DurabilityLocal, chunks)
	stepCluster := step(proto.DurabilityCluster, chunks+64)
	// Baselines over the same bytes, right after: a plain loopback TCP
	// copy, and the same copy with the receiver writing into a file on the
	// replica's disk and syncing every 8 MiB (the replica's batch).
	tcp := plainTCPCopy(t, moved, "", false)
	cached := plainTCPCopy(t, moved, nodes[1].dir, false)
	synced := plainTCPCopy(t, moved, nodes[1].dir, true)
	gbs := func(d time.Duration) float64 { return float64(moved) / d.Seconds() / 1e9 }
	t.Logf("[%s] PERSIST local (flush to SSD): %v; PERSIST cluster right after: %v (a local PERSIST, then the replication phase: the added cost, %v)", mode, local, cluster, repl)
	t.Logf("[%s] replication phase: %.3f GB (pages + metadata) in %v = %.2f GB/s; plain TCP copy of the same bytes: %v = %.2f GB/s; ratio %.2f",
		mode, float64(moved)/1e9, repl, gbs(repl), tcp, gbs(tcp), tcp.Seconds()/repl.Seconds())
	t.Logf("[%s] TCP copy into a file on the replica's disk, no fsync (page cache): %v = %.2f GB/s; ratio replication/that %.2f",
		mode, cached, gbs(cached), cached.Seconds()/repl.Seconds())
	t.Logf("[%s] TCP copy into a file on the replica's disk, fsync every 8 MiB: %v = %.2f GB/s; ratio replication/that %.2f",
		mode, synced, gbs(synced), synced.Seconds()/repl.Seconds())
	t.Logf("[%s] unchanged session: PERSIST local %v, cluster %v", mode, localAgain, again)
	t.Logf("[%s] after 64 more chunks (decode): PERSIST local %v, cluster %v (one page replicated; metadata deltas sent so far: %v)", mode, stepLocal, stepCluster,
		scrapeMetric(t, procs[0].metrics, "flashmem_cluster_metadata_deltas_total"))
	st, err := c1.Cluster(ctx, proto.ClusterRequest{Action: "status"})
	if err != nil {
		t.Fatal(err)
	}
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
	// Resume on the node that is not a replica: every page is pulled.
	ct := dial(t, procs[target].socket)
	t0 = time.Now()
	rr, err := ct.Resume(ctx, "bench")
	if err != nil {
		t.Fatal(err)
	}
	res := time.Since(t0)
	t.Logf("[%s] RESUME of the 512K-token session on %s (no local copy): %v = %.2f GB/s of pages (%d chunks)", mode, nodes[target].id, res, float64(bytes)/res.Seconds()/1e9, rr.Chunks)
	if rr.Chunks != chunks+128 {
		t.Fatalf("resumed %d chunks, want %d", rr.Chunks, chunks+128)
	}
}

// scrapeMetric reads one sample (name with its labels, as printed) from a
// daemon's /metrics.
func scrapeMetric(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not in /metrics", name)
	return 0
}

// plainTCPCopy sends n bytes over a loopback TCP connection in 16 MiB
// writes, as a baseline for the peer port. With dir set, the receiver
// writes them into a file there, with sync every 8 MiB fsync'd.
func plainTCPCopy(t *testing.T, n int64, dir string, fsync bool) time.Duration {
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
			if m > 0 && fsync {
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
