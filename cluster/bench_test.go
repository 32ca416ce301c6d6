package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"
)

// TestCommitLatency reports catalog commit latency on three real Raft
// nodes over loopback, from the leader and from a follower (forwarded over
// the peer port), and the size of a commit entry of a 512K-token session.
// Run with FLASHMEM_CLUSTER_BENCH=1.
func TestCommitLatency(t *testing.T) {
	if os.Getenv("FLASHMEM_CLUSTER_BENCH") == "" {
		t.Skip("set FLASHMEM_CLUSTER_BENCH=1")
	}
	tc := newTestCluster(t, 3, nil)
	ctx := context.Background()
	for _, from := range []string{"leader", "follower"} {
		var nd *Node
		for _, n := range tc.nodes {
			if n.IsLeader() == (from == "leader") {
				nd = n
				break
			}
		}
		var lat []time.Duration
		for i := range 300 {
			t0 := time.Now()
			if _, err := nd.Claim(ctx, fmt.Sprintf("%s-%d", from, i), 1, 1); err != nil {
				t.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		slices.Sort(lat)
		t.Logf("commit from the %s: p50 %v p99 %v (300 claims)", from, lat[150], lat[297])
	}
	// A 512K-token session: 2,048 pages.
	pages := make([]PageEntry, 2048)
	for i := range pages {
		pages[i] = PageEntry{Gen: uint64(1000 + i), CRC: 0xdeadbeef}
	}
	b, _ := json.Marshal(&Command{Op: opCommit, Name: "a-session-name", Node: "n1", Epoch: 3, Session: &Session{
		Chunks: 131072, Pages: pages, Replicas: []string{"n1", "n2"}, Layout: []byte(`{"chunks_per_page":64}`)}})
	t.Logf("commit entry of a 512K-token session (2,048 pages): %d B; catalog record about the same", len(b))
}
