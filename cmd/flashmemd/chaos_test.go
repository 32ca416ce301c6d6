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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/flashmemory/flashmemory/proto"
)

// The catalog history the chaos test records, checked with porcupine. Per
// session the catalog behaves as a register of (exists, owner, persisted
// chunks): PERSIST at durability cluster creates the session (a claim at
// epoch 1) or writes its chunk count, and may succeed only on the owner;
// RESUME on a node moves ownership there and reads the chunk count; DELETE
// removes it, only on the owner. An operation that failed may or may not
// have taken effect (a commit can land after its caller gave up), so it
// steps to either state.
type catState struct {
	Exists bool
	Owner  string
	Chunks uint64
}

type catInput struct {
	Op      string // "resume", "persist" or "delete"
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
			moved := catState{Exists: true, Owner: in.Node, Chunks: s.Chunks}
			if !out.OK {
				if !s.Exists {
					return []any{s}
				}
				return []any{s, moved}
			}
			if !s.Exists || out.Chunks != s.Chunks {
				return nil // a deleted session came back, or a lost or invented persist
			}
			return []any{moved}
		case "persist":
			written := catState{Exists: true, Owner: in.Node, Chunks: in.Chunks}
			mine := !s.Exists || s.Owner == in.Node
			if !out.OK {
				if !mine {
					return []any{s} // a stale owner's commit cannot land
				}
				return []any{s, written}
			}
			if !mine {
				return nil // two owners: a node persisted a session it does not own
			}
			return []any{written}
		case "delete":
			gone := catState{}
			mine := s.Exists && s.Owner == in.Node
			if !out.OK {
				if !mine {
					return []any{s}
				}
				return []any{s, gone}
			}
			if !mine {
				return nil // a node deleted a session it does not own
			}
			return []any{gone}
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
		op(2, 3, catInput{Op: "persist", Session: "a", Node: "n1", Chunks: 64}, catOutput{OK: true}),
		op(4, 5, catInput{Op: "resume", Session: "a", Node: "n2"}, catOutput{OK: true, Chunks: 64}),
		op(6, 100, catInput{Op: "persist", Session: "a", Node: "n2", Chunks: 128}, catOutput{}),
		op(7, 8, catInput{Op: "resume", Session: "a", Node: "n3"}, catOutput{OK: true, Chunks: 128}),
		op(9, 10, catInput{Op: "delete", Session: "a", Node: "n3"}, catOutput{OK: true}),
		op(11, 12, catInput{Op: "resume", Session: "a", Node: "n1"}, catOutput{}),
	}
	if !porcupine.CheckOperations(m, good) {
		t.Fatal("a linearizable history was rejected")
	}
	lost := slices.Clone(good[:2])
	lost[1] = op(4, 5, catInput{Op: "resume", Session: "a", Node: "n2"}, catOutput{OK: true, Chunks: 0})
	if porcupine.CheckOperations(m, lost) {
		t.Fatal("a lost persist was accepted")
	}
	twoOwners := append(slices.Clone(good[:2]), op(6, 7, catInput{Op: "persist", Session: "a", Node: "n1", Chunks: 999}, catOutput{OK: true}))
	if porcupine.CheckOperations(m, twoOwners) {
		t.Fatal("a persist by the old owner was accepted")
	}
	revived := append(slices.Clone(good[:5]), op(11, 12, catInput{Op: "resume", Session: "a", Node: "n1"}, catOutput{OK: true, Chunks: 128}))
	if porcupine.CheckOperations(m, revived) {
		t.Fatal("a resume of a deleted session was accepted")
	}
	staleDelete := append(slices.Clone(good[:4]), op(9, 10, catInput{Op: "delete", Session: "a", Node: "n2"}, catOutput{OK: true}))
	if porcupine.CheckOperations(m, staleDelete) {
		t.Fatal("a delete by a node that lost ownership was accepted")
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
	var hmu sync.Mutex // history, acked, sessions and counters: two clients work at once
	record := func(in catInput, call time.Time, out catOutput) {
		ret := time.Now().UnixNano()
		if !out.OK {
			ret = math.MaxInt64
		}
		hmu.Lock()
		history = append(history, porcupine.Operation{ClientId: 0, Input: in, Output: out, Call: call.UnixNano(), Return: ret})
		hmu.Unlock()
	}
	acked := map[string]uint64{} // last acknowledged cluster persist
	deleted := map[string]bool{} // acknowledged deletes
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
	snapshotCatchUps, persistsOK, persistsFailed, deletes := 0, 0, 0, 0
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
	var fatal []string // from the client goroutines
	// work is one client's turn on node at: resume, check, append, persist
	// (or delete and replace) one session.
	work := func(round, at, slot int, del bool) {
		c := clients[at]
		node := nodes[at].id
		hmu.Lock()
		name := sessions[slot]
		floor := acked[name]
		hmu.Unlock()
		call := time.Now()
		rr, err := c.Resume(ctx, name)
		out := catOutput{OK: err == nil}
		if err == nil {
			out.Chunks = rr.Chunks
		}
		record(catInput{Op: "resume", Session: name, Node: node}, call, out)
		if err != nil {
			if proto.CodeOf(err) == proto.CodeIntegrity {
				hmu.Lock()
				fatal = append(fatal, fmt.Sprintf("round %d: resume %s on %s: %v", round, name, node, err))
				hmu.Unlock()
			}
			t.Logf("round %d: resume %s on %s: %v", round, name, node, err)
			return
		}
		if rr.Chunks < floor {
			hmu.Lock()
			fatal = append(fatal, fmt.Sprintf("round %d: %s resumed on %s with %d chunks, %d were acknowledged before", round, name, node, rr.Chunks, floor))
			hmu.Unlock()
		}
		if del {
			call = time.Now()
			err := c.CloseSession(ctx, rr.Session, true)
			record(catInput{Op: "delete", Session: name, Node: node}, call, catOutput{OK: err == nil})
			if err != nil {
				t.Logf("round %d: delete %s on %s: %v", round, name, node, err)
				c.CloseSession(ctx, rr.Session, false)
				return
			}
			// A new session takes the slot (a new name: names are not
			// reused while replicas may still be removing the old copy).
			nn := fmt.Sprintf("chaos-%d-r%d", slot, round)
			op, err := c.Open(ctx, &proto.Open{Name: nn, Persist: true, Layout: l, Policy: proto.Policy{KMax: 8}})
			if err != nil {
				t.Logf("round %d: open %s on %s: %v", round, nn, node, err)
				return
			}
			if err := appendChunks(c, op.Session, &l, seed, 0, 64, rand.New(rand.NewPCG(uint64(round), 8))); err != nil {
				t.Logf("round %d: append to %s on %s: %v", round, nn, node, err)
				c.CloseSession(ctx, op.Session, false)
				return
			}
			call = time.Now()
			perr := c.PersistDurable(ctx, op.Session, proto.DurabilityCluster)
			record(catInput{Op: "persist", Session: nn, Node: node, Chunks: 64}, call, catOutput{OK: perr == nil})
			hmu.Lock()
			deletes++
			deleted[name] = true
			if perr == nil {
				// Only an acknowledged session replaces the deleted one.
				sessions[slot] = nn
				acked[nn] = 64
			}
			hmu.Unlock()
			c.CloseSession(ctx, op.Session, false)
			if perr != nil {
				t.Logf("round %d: persist of the new %s on %s: %v", round, nn, node, perr)
				// The slot keeps the deleted name; later turns find it gone.
			}
			return
		}
		r := rand.New(rand.NewPCG(uint64(round), uint64(at)))
		if err := appendChunks(c, rr.Session, &l, seed, rr.Chunks, rr.Chunks+64, r); err != nil {
			t.Logf("round %d: append on %s: %v", round, node, err)
		} else {
			call = time.Now()
			perr := c.PersistDurable(ctx, rr.Session, proto.DurabilityCluster)
			record(catInput{Op: "persist", Session: name, Node: node, Chunks: rr.Chunks + 64}, call, catOutput{OK: perr == nil})
			hmu.Lock()
			if perr == nil {
				acked[name] = max(acked[name], rr.Chunks+64)
				persistsOK++
			} else {
				persistsFailed++
			}
			hmu.Unlock()
			if perr != nil {
				t.Logf("round %d: persist on %s: %v", round, node, perr)
			}
		}
		c.CloseSession(ctx, rr.Session, false)
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
		// Two clients work at once, one on each survivor: resume (an
		// ownership move), check, append, persist; now and then the session
		// is deleted instead of closed, and a new one takes its slot. Both
		// may pick the same session, and then race for its ownership.
		var alive []int
		for i := range 3 {
			if i != victim {
				alive = append(alive, i)
			}
		}
		type job struct {
			at, slot int
			del      bool
		}
		jobs := []job{{alive[0], rng.IntN(len(sessions)), rng.IntN(4) == 0}, {alive[1], rng.IntN(len(sessions)), rng.IntN(4) == 0}}
		var cw sync.WaitGroup
		for _, j := range jobs {
			cw.Add(1)
			go func() {
				defer cw.Done()
				work(round, j.at, j.slot, j.del)
			}()
		}
		cw.Wait()
		<-killDone
		if len(fatal) > 0 {
			t.Fatal(strings.Join(fatal, "\n"))
		}
		// Every fifth round the victim stays down while the others commit
		// more entries than the log keeps behind a snapshot (threshold 32,
		// 16 trailing entries), so it must catch up by snapshot install.
		c := clients[alive[0]]
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
					t.Logf("filler delete: %v", err)
					c.CloseSession(ctx, fop.Session, false)
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
	// Acknowledged deletes stay deleted on every node.
	for name := range deleted {
		for i, c := range clients {
			if _, err := c.Resume(ctx, name); proto.CodeOf(err) != proto.CodeUnknownSession {
				var ops []string
				for _, op := range history {
					if op.Input.(catInput).Session == name {
						ops = append(ops, fmt.Sprintf("%s [%d, %d]", catalogModel.DescribeOperation(op.Input, op.Output), op.Call, op.Return))
					}
				}
				t.Fatalf("deleted session %s on %s: RESUME answered %v, want UNKNOWN_SESSION; its history:\n%s", name, nodes[i].id, err, strings.Join(ops, "\n"))
			}
		}
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
	ops := map[string]int{}
	for _, op := range history {
		ops[op.Input.(catInput).Op]++
	}
	t.Logf("chaos: %d rounds, two clients at once; %d persists acknowledged, %d refused; %d sessions deleted and replaced; history of %d catalog ops (%d resumes = ownership moves, %d persists, %d deletes) linearizable (%v); %d leader failovers p50 %v p99 %v max %v; %d restarts caught up by snapshot",
		rounds, persistsOK, persistsFailed, deletes, len(history), ops["resume"], ops["persist"], ops["delete"], res, len(failovers), pct(0.5), pct(0.99), pct(1), snapshotCatchUps)
}
