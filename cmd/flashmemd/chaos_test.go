package main_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/flashmemory/flashmemory/proto"
)

// The catalog history the chaos test records, checked with porcupine. Per
// session the catalog behaves as a register of (owner, persisted chunks):
// RESUME on a node moves ownership there and reads the chunk count;
// PERSIST at durability cluster writes it and may succeed only on the
// owner. An operation that failed may or may not have taken effect (a
// commit can land after its caller gave up), so it steps to either state.
type catState struct {
	Owner  string
	Chunks uint64
}

type catInput struct {
	Op      string // "resume" or "persist"
	Session string
	Node    string
	Chunks  uint64 // persist: the chunk count written
}

type catOutput struct {
	OK     bool
	Chunks uint64 // resume: the chunk count read
}

var catalogModel = porcupine.NondeterministicModel{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range h {
			k := op.Input.(catInput).Session
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() []any { return []any{catState{}} },
	Step: func(state, input, output any) []any {
		s, in, out := state.(catState), input.(catInput), output.(catOutput)
		switch in.Op {
		case "resume":
			moved := catState{Owner: in.Node, Chunks: s.Chunks}
			if !out.OK {
				return []any{s, moved}
			}
			if out.Chunks != s.Chunks {
				return nil
			}
			return []any{moved}
		case "persist":
			written := catState{Owner: s.Owner, Chunks: in.Chunks}
			if !out.OK {
				if s.Owner != in.Node {
					return []any{s} // a stale owner's commit cannot land
				}
				return []any{s, written}
			}
			if s.Owner != in.Node {
				return nil // two owners: a node persisted a session it does not own
			}
			return []any{written}
		}
		return nil
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(catInput), output.(catOutput)
		return fmt.Sprintf("%s(%s@%s, %d) -> %v %d", in.Op, in.Session, in.Node, in.Chunks, out.OK, out.Chunks)
	},
}

// TestCatalogModelCatchesViolations: the checker is not vacuous — a read of
// a value never written, and a persist by a node that lost ownership, are
// rejected.
func TestCatalogModelCatchesViolations(t *testing.T) {
	m := catalogModel.ToModel()
	op := func(call, ret int64, in catInput, out catOutput) porcupine.Operation {
		return porcupine.Operation{Input: in, Output: out, Call: call, Return: ret}
	}
	good := []porcupine.Operation{
		op(0, 1, catInput{Op: "resume", Session: "a", Node: "n1"}, catOutput{OK: true}),
		op(2, 3, catInput{Op: "persist", Session: "a", Node: "n1", Chunks: 64}, catOutput{OK: true}),
		op(4, 5, catInput{Op: "resume", Session: "a", Node: "n2"}, catOutput{OK: true, Chunks: 64}),
		op(6, 100, catInput{Op: "persist", Session: "a", Node: "n2", Chunks: 128}, catOutput{}),
		op(7, 8, catInput{Op: "resume", Session: "a", Node: "n3"}, catOutput{OK: true, Chunks: 128}),
	}
	if !porcupine.CheckOperations(m, good) {
		t.Fatal("a linearizable history was rejected")
	}
	lost := slices.Clone(good[:3])
	lost[2] = op(4, 5, catInput{Op: "resume", Session: "a", Node: "n2"}, catOutput{OK: true, Chunks: 0})
	if porcupine.CheckOperations(m, lost) {
		t.Fatal("a lost persist was accepted")
	}
	twoOwners := append(slices.Clone(good[:3]), op(6, 7, catInput{Op: "persist", Session: "a", Node: "n1", Chunks: 999}, catOutput{OK: true}))
	if porcupine.CheckOperations(m, twoOwners) {
		t.Fatal("a persist by the old owner was accepted")
	}
}

// TestClusterChaos: rounds of SIGKILL of a random node (the leader half
// the time) and restarts, while a client resumes, appends and persists at
// durability cluster on the survivors. Every acknowledged PERSIST stays
// resumable byte-identical, the recorded catalog history is linearizable,
// and leader failover times are reported. FLASHMEM_CHAOS_ROUNDS sets the
// rounds (scripts/chaos.sh runs 50; CI the default 5).
func TestClusterChaos(t *testing.T) {
	rounds := 5
	if v, err := strconv.Atoi(os.Getenv("FLASHMEM_CHAOS_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	root := t.TempDir()
	secret := filepath.Join(root, "cluster.secret")
	os.WriteFile(secret, []byte("chaos-test-cluster-secret-0123456789"), 0o600)
	var nodes []clusterNode
	var boot []string
	for i := 1; i <= 3; i++ {
		n := clusterNode{id: fmt.Sprintf("n%d", i), raft: freePort(t), peer: freePort(t), dir: filepath.Join(root, fmt.Sprintf("n%d", i))}
		os.MkdirAll(n.dir, 0o755)
		nodes = append(nodes, n)
		boot = append(boot, n.id+"="+n.raft)
	}
	extra := "snapshot_threshold = 32\nsnapshot_interval = \"1s\"\n"
	procs := make([]*clusterProc, 3)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); procs[i] = startClusterDaemonExtra(t, nodes[i], boot, secret, extra) }()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	clients := make([]*proto.Client, 3)
	connect := func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := proto.Dial(ctx, procs[i].socket, &proto.Options{ClientName: "chaos"})
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	for i := range 3 {
		connect(i)
	}
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	waitCluster(t, clients[0], 3)

	ctx := context.Background()
	l := layout(64)
	const seed = 99
	sessions := []string{"chaos-a", "chaos-b"}
	var history []porcupine.Operation
	// A failed operation's outcome is unknown (its commit may land later),
	// so it stays open to the end of the history, as Jepsen's "info" ops.
	record := func(in catInput, call time.Time, out catOutput) {
		ret := time.Now().UnixNano()
		if !out.OK {
			ret = math.MaxInt64
		}
		history = append(history, porcupine.Operation{ClientId: 0, Input: in, Output: out, Call: call.UnixNano(), Return: ret})
	}
	acked := map[string]uint64{} // last acknowledged cluster persist
	// Create the sessions on node 1 with one persisted page each.
	for _, name := range sessions {
		c := clients[0]
		op, err := c.Open(ctx, &proto.Open{Name: name, Persist: true, Layout: l, Policy: proto.Policy{KMax: 8}})
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(1, uint64(len(name))))
		if err := appendChunks(c, op.Session, &l, seed, 0, 64, r); err != nil {
			t.Fatal(err)
		}
		call := time.Now()
		record(catInput{Op: "resume", Session: name, Node: "n1"}, call, catOutput{OK: true})
		call = time.Now()
		err = c.PersistDurable(ctx, op.Session, proto.DurabilityCluster)
		record(catInput{Op: "persist", Session: name, Node: "n1", Chunks: 64}, call, catOutput{OK: err == nil})
		if err != nil {
			t.Fatal(err)
		}
		acked[name] = 64
		if err := c.CloseSession(ctx, op.Session, false); err != nil {
			t.Fatal(err)
		}
	}

	rng := rand.New(rand.NewPCG(2026, 12))
	var failovers []time.Duration
	snapshotCatchUps, persistsOK, persistsFailed := 0, 0, 0
	leaderOf := func() (string, int) {
		for i, c := range clients {
			if c == nil {
				continue
			}
			if r, err := c.Cluster(ctx, proto.ClusterRequest{Action: "status"}); err == nil && r.Leader != "" {
				return r.Leader, i
			}
		}
		return "", -1
	}
	deadline := time.Now().Add(time.Duration(rounds) * 15 * time.Second)
	for round := 0; round < rounds && time.Now().Before(deadline); round++ {
		leader, _ := leaderOf()
		victim := rng.IntN(3)
		if rng.IntN(2) == 0 && leader != "" {
			victim = int(leader[1] - '1')
		}
		var before *proto.ClusterReply
		before, _ = clients[victim].Cluster(ctx, proto.ClusterRequest{Action: "status"})
		clients[victim].Close()
		clients[victim] = nil
		// The kill lands at a random moment while the client works on a
		// survivor (0-300 ms into its resume, append and persist).
		killDone := make(chan struct{})
		killDelay := time.Duration(rng.IntN(300)) * time.Millisecond
		var survivors []*proto.Client
		for i, c := range clients {
			if i != victim && c != nil {
				survivors = append(survivors, c)
			}
		}
		go func() {
			defer close(killDone)
			time.Sleep(killDelay)
			killed := time.Now()
			procs[victim].cmd.Process.Signal(syscall.SIGKILL)
			<-procs[victim].exited
			if nodes[victim].id != leader {
				return
			}
			// Failover: until a survivor names a new leader.
			for time.Since(killed) < 20*time.Second {
				for _, c := range survivors {
					if r, err := c.Cluster(ctx, proto.ClusterRequest{Action: "status"}); err == nil && r.Leader != "" && r.Leader != leader {
						failovers = append(failovers, time.Since(killed))
						return
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		// The client works on a survivor: resume, check, append, persist.
		var alive []int
		for i := range 3 {
			if i != victim {
				alive = append(alive, i)
			}
		}
		at := alive[rng.IntN(len(alive))]
		name := sessions[rng.IntN(len(sessions))]
		c := clients[at]
		call := time.Now()
		rr, err := c.Resume(ctx, name)
		out := catOutput{OK: err == nil}
		if err == nil {
			out.Chunks = rr.Chunks
		}
		record(catInput{Op: "resume", Session: name, Node: nodes[at].id}, call, out)
		if err == nil {
			if rr.Chunks < acked[name] {
				t.Fatalf("round %d: %s resumed on %s with %d chunks, %d were acknowledged", round, name, nodes[at].id, rr.Chunks, acked[name])
			}
			r := rand.New(rand.NewPCG(uint64(round), 7))
			if err := appendChunks(c, rr.Session, &l, seed, rr.Chunks, rr.Chunks+64, r); err != nil {
				t.Logf("round %d: append on %s: %v", round, nodes[at].id, err)
			} else {
				call = time.Now()
				perr := c.PersistDurable(ctx, rr.Session, proto.DurabilityCluster)
				record(catInput{Op: "persist", Session: name, Node: nodes[at].id, Chunks: rr.Chunks + 64}, call, catOutput{OK: perr == nil})
				if perr == nil {
					acked[name] = rr.Chunks + 64
					persistsOK++
				} else {
					persistsFailed++
					t.Logf("round %d: persist on %s: %v", round, nodes[at].id, perr)
				}
			}
			c.CloseSession(ctx, rr.Session, false)
		} else {
			if proto.CodeOf(err) == proto.CodeIntegrity {
				t.Fatalf("round %d: resume %s on %s: %v", round, name, nodes[at].id, err)
			}
			t.Logf("round %d: resume %s on %s: %v", round, name, nodes[at].id, err)
		}
		<-killDone
		// Every fifth round the victim stays down while the others commit
		// more entries than the log keeps behind a snapshot (threshold 32,
		// 16 trailing entries), so it must catch up by snapshot install.
		if round%5 == 4 {
			for j := range 12 {
				name := fmt.Sprintf("filler-%d-%d", round, j)
				fop, err := c.Open(ctx, &proto.Open{Name: name, Persist: true, Layout: l, Policy: proto.Policy{KMax: 8}})
				if err != nil {
					t.Fatalf("filler open: %v", err)
				}
				if err := appendChunks(c, fop.Session, &l, seed, 0, 64, rand.New(rand.NewPCG(9, 9))); err != nil {
					t.Fatal(err)
				}
				if err := c.PersistDurable(ctx, fop.Session, proto.DurabilityCluster); err != nil {
					t.Logf("filler persist: %v", err)
				}
				if err := c.CloseSession(ctx, fop.Session, true); err != nil {
					t.Fatalf("filler delete: %v", err)
				}
			}
			time.Sleep(2500 * time.Millisecond) // a snapshot interval (1 s, jittered to 2 s) passes
		}
		// Restart the victim; it rejoins and catches up.
		procs[victim] = startClusterDaemonExtra(t, nodes[victim], boot, secret, extra)
		connect(victim)
		caught := false
		for t0 := time.Now(); time.Since(t0) < 20*time.Second; time.Sleep(20 * time.Millisecond) {
			r, err := clients[victim].Cluster(ctx, proto.ClusterRequest{Action: "status"})
			if err != nil || r.Leader == "" {
				continue
			}
			lr, err := clients[alive[0]].Cluster(ctx, proto.ClusterRequest{Action: "status"})
			if err == nil && r.AppliedIndex >= lr.CommitIndex {
				caught = true
				if before != nil && r.LastSnapshot > before.AppliedIndex {
					snapshotCatchUps++
				}
				if round%5 == 4 && before != nil {
					t.Logf("round %d: %s applied %d before the kill, caught up to %d, last snapshot %d (leader's %d)", round, nodes[victim].id, before.AppliedIndex, r.AppliedIndex, r.LastSnapshot, lr.LastSnapshot)
				}
				break
			}
		}
		if !caught {
			t.Fatalf("round %d: %s did not catch up after restart", round, nodes[victim].id)
		}
	}
	// Every acknowledged persist is resumable and intact: VERIFY checks
	// every page against the manifest, cycles read pages back.
	for _, name := range sessions {
		c := clients[rng.IntN(3)]
		v, err := c.Verify(ctx, proto.AdminTarget{Name: name})
		if err != nil {
			t.Fatalf("verify %s: %v", name, err)
		}
		if v.Bad != 0 || v.Cluster == nil || v.Cluster.Bad != 0 || v.Cluster.Verified != v.Cluster.Manifest {
			t.Fatalf("verify %s: %+v %+v", name, v, v.Cluster)
		}
		rr, err := c.Resume(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if rr.Chunks < acked[name] {
			t.Fatalf("%s: %d chunks, %d acknowledged", name, rr.Chunks, acked[name])
		}
		mem, err := rr.Region.Map()
		if err != nil {
			t.Fatal(err)
		}
		r := rand.New(rand.NewPCG(3, 3))
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: rr.Session, Position: rr.Chunks * 4, Queries: hidden(r)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("cycle %s: %v %v", name, err, res[0].Err)
		}
		verify(t, &l, &rr.Region.RegionDesc, mem, seed, rr.Chunks, res[0].Pages)
		proto.Unmap(mem)
		c.CloseSession(ctx, rr.Session, false)
	}
	res := porcupine.CheckOperationsTimeout(catalogModel.ToModel(), history, 30*time.Second)
	if res == porcupine.Illegal {
		t.Fatalf("catalog history of %d operations is not linearizable", len(history))
	}
	slices.Sort(failovers)
	pct := func(p float64) time.Duration {
		if len(failovers) == 0 {
			return 0
		}
		return failovers[min(len(failovers)-1, int(p*float64(len(failovers))))]
	}
	t.Logf("chaos: %d rounds, %d persists acknowledged, %d refused; history of %d catalog ops linearizable (%v); %d leader failovers p50 %v p99 %v max %v; %d restarts caught up by snapshot",
		rounds, persistsOK, persistsFailed, len(history), res, len(failovers), pct(0.5), pct(0.99), pct(1), snapshotCatchUps)
}
