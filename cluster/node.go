package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// Config describes this node.
type Config struct {
	NodeID   string
	RaftAddr string
	PeerAddr string
	// RaftAdvertise and PeerAdvertise are the addresses other members dial
	// when they differ from the listen addresses (NAT, proxies); default
	// RaftAddr and PeerAddr.
	RaftAdvertise string
	PeerAdvertise string
	// Dir holds raft.db (log and stable store) and snapshots/.
	Dir string
	// Bootstrap lists "id=raft_addr" of the first members; used only when
	// Dir holds no Raft state yet.
	Bootstrap         []string
	ReplicationFactor int
	Secret            []byte
	// TLS, if set, wraps both ports in mutual TLS (the caller sets
	// ClientAuth and the CAs); the HMAC challenge runs inside it.
	ServerTLS *tls.Config
	ClientTLS *tls.Config
	// CapacityBytes and GPUs describe the node in the catalog.
	CapacityBytes int64
	GPUs          int
	Logger        *slog.Logger
	// HeartbeatTimeout and ElectionTimeout tune failover (0: 500 ms each,
	// for a LAN; failover takes about one election timeout plus a vote).
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// SnapshotThreshold is how many log entries trigger a snapshot (0: 1024),
	// checked every SnapshotInterval (0: 30 s).
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	// DownAfter is how long a member may miss pings before its copies stop
	// counting and its sessions are re-replicated (0: 5 s).
	DownAfter time.Duration
	// RaftLogLevel is hclog's level for Raft's own messages (default warn).
	RaftLogLevel string
	// SendStreams is how many PUT_PAGES batches the owner keeps in flight
	// per replica, each on its own connection (0: 4); BatchBytes bounds one
	// batch (0: 8 MiB, at most 256 MiB).
	SendStreams int
	BatchBytes  int
}

// ParseBootstrap splits "id=addr" entries.
func ParseBootstrap(list []string) ([]raft.Server, error) {
	var out []raft.Server
	seen := map[string]bool{}
	for _, e := range list {
		id, addr, ok := strings.Cut(e, "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("%w: bootstrap entry %q is not id=host:port", ErrConfig, e)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("%w: bootstrap entry %q: %v", ErrConfig, e, err)
		}
		if seen[id] {
			return nil, fmt.Errorf("%w: bootstrap lists %q twice", ErrConfig, id)
		}
		seen[id] = true
		out = append(out, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(addr), Suffrage: raft.Voter})
	}
	return out, nil
}

// Node is one running cluster member.
type Node struct {
	cfg    Config
	log    *slog.Logger
	cat    *Catalog
	raft   *raft.Raft
	logs   *raftboltdb.BoltStore
	trans  *raft.NetworkTransport
	peerLn *authListener
	client *peerClient
	store  Store
	// sessMu serialises replication of one session at a time per name.
	sessMu sync.Map // name → *sync.Mutex
	// tombs remembers recently deleted names and the epoch they were
	// deleted at: a replica write from an owner of that epoch or older
	// still in flight must not bring the copy back (fence).
	tombMu sync.Mutex
	tombs  map[string]tomb

	connMu sync.Mutex
	conns  map[net.Conn]struct{} // accepted peer connections, closed by Close

	healthMu sync.Mutex
	contact  map[string]time.Time // member id → last successful ping

	metrics Metrics

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// Metrics are counters a daemon exports.
type Metrics struct {
	BytesSent atomic.Uint64
	// MetaDeltas counts metadata sent to a replica as a delta.
	MetaDeltas       atomic.Uint64
	bytesReceived    atomic.Uint64
	bytesServed      atomic.Uint64
	PagesPulled      atomic.Uint64
	SelfHeals        atomic.Uint64
	checksumFailures atomic.Uint64
	Rereplications   atomic.Uint64
	Refused          atomic.Uint64
	commitMu         sync.Mutex
	commitLat        []time.Duration // ring of recent commit latencies
	commitNext       int
	LastReplication  atomic.Int64 // unix nanos of the last completed replication
	ReplicationLagNS atomic.Int64 // duration of the last persist's replication
}

func (m *Metrics) observeCommit(d time.Duration) {
	m.commitMu.Lock()
	defer m.commitMu.Unlock()
	if len(m.commitLat) < 1024 {
		m.commitLat = append(m.commitLat, d)
		return
	}
	m.commitLat[m.commitNext] = d
	m.commitNext = (m.commitNext + 1) % len(m.commitLat)
}

// CommitLatencies returns recent catalog commit latencies.
func (m *Metrics) CommitLatencies() []time.Duration {
	m.commitMu.Lock()
	defer m.commitMu.Unlock()
	return append([]time.Duration(nil), m.commitLat...)
}

// BytesReceived is page bytes this node accepted as a replica.
func (m *Metrics) BytesReceived() uint64 { return m.bytesReceived.Load() }

// BytesServed is page bytes this node sent to pulling nodes.
func (m *Metrics) BytesServed() uint64 { return m.bytesServed.Load() }

// ChecksumFailures counts pages that arrived or were read with a bad CRC.
func (m *Metrics) ChecksumFailures() uint64 { return m.checksumFailures.Load() }

// Open starts the node: Raft (bootstrapping on first start when Bootstrap
// is set), the peer port, membership registration and the health loop.
func Open(cfg Config, store Store) (*Node, error) {
	if cfg.NodeID == "" || cfg.RaftAddr == "" || cfg.PeerAddr == "" || cfg.Dir == "" {
		return nil, fmt.Errorf("%w: node_id, raft_addr, peer_addr and a data directory are required", ErrConfig)
	}
	if len(cfg.Secret) < 16 {
		return nil, fmt.Errorf("%w: the cluster secret must be at least 16 bytes (secret_file)", ErrConfig)
	}
	if cfg.ReplicationFactor <= 0 {
		cfg.ReplicationFactor = 2
	}
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = 500 * time.Millisecond
	}
	if cfg.ElectionTimeout == 0 {
		cfg.ElectionTimeout = 500 * time.Millisecond
	}
	if cfg.SnapshotThreshold == 0 {
		cfg.SnapshotThreshold = 1024
	}
	if cfg.DownAfter == 0 {
		cfg.DownAfter = 5 * time.Second
	}
	if cfg.SendStreams <= 0 {
		cfg.SendStreams = defaultSendStreams
	}
	if cfg.BatchBytes <= 0 {
		cfg.BatchBytes = defaultBatchBytes
	}
	cfg.BatchBytes = min(cfg.BatchBytes, maxPayload/2)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	boot, err := ParseBootstrap(cfg.Bootstrap)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster dir: %w", err)
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID), cat: NewCatalog(), store: store,
		contact: map[string]time.Time{}, stop: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	n.cat.onApply = n.onApply
	n.cat.onRestore = n.onRestore
	d := &dialer{id: cfg.NodeID, secret: cfg.Secret, tls: cfg.ClientTLS}
	n.client = newPeerClient(d)
	n.client.onBytes = func(b int) { n.metrics.BytesSent.Add(uint64(b)) }

	ok := false
	defer func() {
		if !ok {
			n.closeParts()
		}
	}()
	lvl := cfg.RaftLogLevel
	if lvl == "" {
		lvl = "warn"
	}
	hl := hclog.New(&hclog.LoggerOptions{Name: "raft." + cfg.NodeID, Level: hclog.LevelFromString(lvl), Output: os.Stderr})

	rln, err := net.Listen("tcp", cfg.RaftAddr)
	if err != nil {
		return nil, fmt.Errorf("raft_addr %s: %w", cfg.RaftAddr, err)
	}
	if cfg.RaftAdvertise == "" {
		cfg.RaftAdvertise = cfg.RaftAddr
	}
	if cfg.PeerAdvertise == "" {
		cfg.PeerAdvertise = cfg.PeerAddr
	}
	n.cfg = cfg
	adv, err := net.ResolveTCPAddr("tcp", cfg.RaftAdvertise)
	if err != nil {
		rln.Close()
		return nil, fmt.Errorf("%w: raft_addr %s: %v", ErrConfig, cfg.RaftAddr, err)
	}
	refused := func() { n.metrics.Refused.Add(1) }
	stream := &raftStream{authListener: newAuthListener(rln, cfg.Secret, cfg.ServerTLS, n.log, "raft", refused), d: d, advertise: adv}
	n.trans = raft.NewNetworkTransportWithLogger(stream, 3, 10*time.Second, hl)

	pln, err := net.Listen("tcp", cfg.PeerAddr)
	if err != nil {
		return nil, fmt.Errorf("peer_addr %s: %w", cfg.PeerAddr, err)
	}
	n.peerLn = newAuthListener(pln, cfg.Secret, cfg.ServerTLS, n.log, "peer", refused)

	n.logs, err = raftboltdb.NewBoltStore(filepath.Join(cfg.Dir, "raft.db"))
	if err != nil {
		return nil, fmt.Errorf("raft log store: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hl)
	if err != nil {
		return nil, fmt.Errorf("raft snapshots: %w", err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hl
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.HeartbeatTimeout / 2
	// A follower learns that an entry committed from the leader's next
	// AppendEntries, sent at the latest CommitTimeout (to 2x) after the
	// last one: every RESUME (a claim) on a follower waits that long for
	// its own catalog copy to apply the claim. 5 ms: ~5-10 ms for it, and
	// ~130 empty AppendEntries a second per follower when idle.
	rc.CommitTimeout = 5 * time.Millisecond
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = 30 * time.Second
	if cfg.SnapshotInterval > 0 {
		rc.SnapshotInterval = cfg.SnapshotInterval
	}
	rc.TrailingLogs = max(cfg.SnapshotThreshold/4, 16)
	existing, err := raft.HasExistingState(n.logs, n.logs, snaps)
	if err != nil {
		return nil, fmt.Errorf("raft state: %w", err)
	}
	n.raft, err = raft.NewRaft(rc, n.cat, n.logs, n.logs, snaps, n.trans)
	if err != nil {
		return nil, fmt.Errorf("raft: %w", err)
	}
	if !existing && len(boot) > 0 {
		self := false
		for _, s := range boot {
			self = self || string(s.ID) == cfg.NodeID
		}
		if !self {
			return nil, fmt.Errorf("%w: bootstrap does not list this node (%s)", ErrConfig, cfg.NodeID)
		}
		if err := n.raft.BootstrapCluster(raft.Configuration{Servers: boot}).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return nil, fmt.Errorf("raft bootstrap: %w", err)
		}
		n.log.Info("cluster bootstrapped", "members", len(boot))
	}
	ok = true
	n.wg.Add(3)
	go func() { defer n.wg.Done(); n.acceptPeers() }()
	go func() { defer n.wg.Done(); n.registerLoop() }()
	go func() { defer n.wg.Done(); n.healthLoop() }()
	return n, nil
}

func (n *Node) acceptPeers() {
	for {
		c, err := n.peerLn.Accept()
		if err != nil {
			return
		}
		n.connMu.Lock()
		select {
		case <-n.stop:
			n.connMu.Unlock()
			c.Close()
			return
		default:
		}
		n.conns[c] = struct{}{}
		n.wg.Add(1)
		n.connMu.Unlock()
		go func() {
			defer n.wg.Done()
			n.servePeer(c)
			n.connMu.Lock()
			delete(n.conns, c)
			n.connMu.Unlock()
		}()
	}
}

// registerLoop puts this node's member record (peer address, capacity) in
// the catalog once a leader exists, and again whenever it is missing or
// out of date (a restart with a new address).
func (n *Node) registerLoop() {
	me := Member{ID: n.cfg.NodeID, RaftAddr: n.cfg.RaftAdvertise, PeerAddr: n.cfg.PeerAdvertise, CapacityBytes: n.cfg.CapacityBytes, GPUs: n.cfg.GPUs}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		if m, ok := n.cat.Member(me.ID); ok && m == me {
			t.Reset(2 * time.Second)
			continue
		}
		if _, err := n.Apply(context.Background(), &Command{Op: opMember, Member: &me}); err != nil {
			n.log.Debug("registering member", "err", err)
		}
	}
}

// healthLoop pings every member's peer port; the results are the members'
// last contact (cluster status) and liveness (re-replication).
func (n *Node) healthLoop() {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		var wg sync.WaitGroup
		for _, m := range n.cat.Members() {
			if m.ID == n.cfg.NodeID {
				n.healthMu.Lock()
				n.contact[m.ID] = time.Now()
				n.healthMu.Unlock()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
				defer cancel()
				var pr pingReply
				if _, err := n.client.call(ctx, m.PeerAddr, popPing, struct{}{}, &pr); err == nil {
					n.healthMu.Lock()
					n.contact[m.ID] = time.Now()
					n.healthMu.Unlock()
				}
			}()
		}
		wg.Wait()
		if i%4 == 3 {
			n.repair()
		}
	}
}

// Alive reports whether member id answered a ping within DownAfter.
func (n *Node) Alive(id string) bool {
	if id == n.cfg.NodeID {
		return true
	}
	n.healthMu.Lock()
	defer n.healthMu.Unlock()
	t, ok := n.contact[id]
	return ok && time.Since(t) < n.cfg.DownAfter
}

// ID is this node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// Catalog is the local replica of the catalog (reads may lag the leader).
func (n *Node) Catalog() *Catalog { return n.cat }

// Metrics returns the node's counters.
func (n *Node) Metrics() *Metrics { return &n.metrics }

// ReplicationFactor is the configured number of copies.
func (n *Node) ReplicationFactor() int { return n.cfg.ReplicationFactor }

// IsLeader reports whether this node leads.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Apply commits cmd through the leader (forwarded over the peer port when
// this node is a follower), retrying through elections for up to 5 s.
func (n *Node) Apply(ctx context.Context, cmd *Command) (*Result, error) {
	start := time.Now()
	if cmd.ID == "" {
		// One ID for every attempt of this call (see Command.ID).
		cmd.ID = n.cfg.NodeID + "-" + strconv.FormatUint(rand.Uint64(), 36)
	}
	deadline := start.Add(5 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	var last error
	for time.Now().Before(deadline) {
		var r *Result
		var err error
		if n.raft.State() == raft.Leader {
			r, err = n.applyLocal(cmd, time.Until(deadline))
		} else {
			r, err = n.forward(ctx, popApply, cmd)
		}
		if err == nil {
			n.metrics.observeCommit(time.Since(start))
			if rerr := r.Error(); rerr != nil {
				return r, rerr
			}
			return r, nil
		}
		last = err
		if !errors.Is(err, ErrNoQuorum) && !isTransient(err) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-n.stop:
			return nil, fmt.Errorf("%w: node closing", ErrNoQuorum)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("%w: no leader committed %s of %q within 5 s (is a majority of members up and reachable?): %v", ErrNoQuorum, cmd.Op, cmd.Name, last)
}

func isTransient(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) || strings.Contains(err.Error(), "connection re")
}

// forward sends a leader-only request to the leader's peer port.
func (n *Node) forward(ctx context.Context, op byte, hdr any) (*Result, error) {
	_, lid := n.raft.LeaderWithID()
	if lid == "" {
		return nil, fmt.Errorf("%w: no leader known", ErrNoQuorum)
	}
	m, ok := n.cat.Member(string(lid))
	if !ok {
		return nil, fmt.Errorf("%w: leader %s has not registered its peer address yet", ErrNoQuorum, lid)
	}
	var r Result
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := n.client.call(cctx, m.PeerAddr, op, hdr, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func (n *Node) applyLocal(cmd *Command, timeout time.Duration) (*Result, error) {
	if n.raft.State() != raft.Leader {
		return nil, fmt.Errorf("%w: not the leader", ErrNoQuorum)
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	f := n.raft.Apply(b, min(timeout, 5*time.Second))
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoQuorum, err)
	}
	r, _ := f.Response().(*Result)
	if r == nil {
		r = &Result{}
	}
	return r, nil
}

func (n *Node) addVoterLocal(id, addr string) error {
	if n.raft.State() != raft.Leader {
		return fmt.Errorf("%w: not the leader", ErrNoQuorum)
	}
	if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("%w: adding %s: %v", ErrNoQuorum, id, err)
	}
	n.log.Info("member added", "id", id, "raft_addr", addr)
	return nil
}

func (n *Node) removeLocal(id string) error {
	if n.raft.State() != raft.Leader {
		return fmt.Errorf("%w: not the leader", ErrNoQuorum)
	}
	// Raft removes an unknown server without complaint, so a typo would
	// look like a removal. A removal that stopped half way (still in the
	// Raft configuration, the catalog's members, or a session's copies)
	// is still known here and is finished by running it again.
	known, members, err := n.memberKnown(id)
	if err != nil {
		return err
	}
	if !known {
		return fmt.Errorf("%w: %q is not a member (members: %s); see flashmemctl cluster status", ErrUnknownMember, id, strings.Join(members, ", "))
	}
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
		return fmt.Errorf("%w: removing %s: %v", ErrNoQuorum, id, err)
	}
	for _, c := range []*Command{{Op: opRemoveMember, Node: id}, {Op: opDropReplica, Node: id}} {
		if _, err := n.applyLocal(c, 5*time.Second); err != nil {
			return err
		}
	}
	n.log.Info("member removed", "id", id)
	return nil
}

// memberKnown reports whether id is anywhere a removal touches, and the
// ids of the current members (Raft configuration and catalog) for the
// error message.
func (n *Node) memberKnown(id string) (bool, []string, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return false, nil, fmt.Errorf("%w: reading the configuration: %v", ErrNoQuorum, err)
	}
	ids := map[string]bool{}
	for _, srv := range f.Configuration().Servers {
		ids[string(srv.ID)] = true
	}
	for _, m := range n.cat.Members() {
		ids[m.ID] = true
	}
	known := ids[id]
	for _, s := range n.cat.Sessions() {
		if slices.Contains(s.Replicas, id) || slices.Contains(s.Assigned, id) {
			known = true
		}
	}
	members := slices.Sorted(maps.Keys(ids))
	return known, members, nil
}

// Join asks the cluster reachable at peerAddr (any member's peer port) to
// add this node as a voter. Run it on a node started without bootstrap.
func (n *Node) Join(ctx context.Context, peerAddr string) error {
	h := joinHdr{ID: n.cfg.NodeID, RaftAddr: n.cfg.RaftAdvertise}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := n.client.call(ctx, peerAddr, popJoin, h, nil)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || !(errors.Is(err, ErrNoQuorum) || isTransient(err)) {
			return fmt.Errorf("joining through %s: %w", peerAddr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Remove takes member id out of the Raft configuration and the catalog;
// its copies stop counting and its sessions are re-replicated.
func (n *Node) Remove(ctx context.Context, id string) error {
	if n.raft.State() == raft.Leader {
		return n.removeLocal(id)
	}
	_, err := n.forward(ctx, popRemove, joinHdr{ID: id})
	return err
}

// MemberStatus is one row of Status.
type MemberStatus struct {
	ID          string    `json:"id"`
	Address     string    `json:"address"`
	PeerAddress string    `json:"peer_address"`
	Suffrage    string    `json:"suffrage"`
	State       string    `json:"state"`
	LastContact time.Time `json:"last_contact"`
	Leader      bool      `json:"leader"`
}

// Status is the cluster as this node sees it.
type Status struct {
	Node            string         `json:"node"`
	State           string         `json:"state"`
	Leader          string         `json:"leader"`
	LeaderAddr      string         `json:"leader_addr"`
	Term            uint64         `json:"term"`
	CommitIndex     uint64         `json:"commit_index"`
	AppliedIndex    uint64         `json:"applied_index"`
	LastSnapshot    uint64         `json:"last_snapshot_index"`
	Members         []MemberStatus `json:"members"`
	Sessions        int            `json:"sessions"`
	UnderReplicated []string       `json:"under_replicated"`
	ReplicationRF   int            `json:"replication_factor"`
}

// Status reports leader, term, members and under-replicated sessions.
func (n *Node) Status() Status {
	st := n.raft.Stats()
	u := func(k string) uint64 {
		var v uint64
		fmt.Sscan(st[k], &v)
		return v
	}
	la, lid := n.raft.LeaderWithID()
	s := Status{Node: n.cfg.NodeID, State: n.raft.State().String(), Leader: string(lid), LeaderAddr: string(la),
		Term: u("term"), CommitIndex: u("commit_index"), AppliedIndex: u("applied_index"), LastSnapshot: u("last_snapshot_index"),
		ReplicationRF: n.cfg.ReplicationFactor, UnderReplicated: []string{}}
	members := map[string]Member{}
	for _, m := range n.cat.Members() {
		members[m.ID] = m
	}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			id := string(srv.ID)
			ms := MemberStatus{ID: id, Address: string(srv.Address), PeerAddress: members[id].PeerAddr, Suffrage: srv.Suffrage.String(), Leader: srv.ID == lid}
			n.healthMu.Lock()
			ms.LastContact = n.contact[id]
			n.healthMu.Unlock()
			switch {
			case n.Alive(id) && srv.ID == lid:
				ms.State = "leader"
			case n.Alive(id):
				ms.State = "alive"
			case ms.LastContact.IsZero():
				ms.State = "unknown"
			default:
				ms.State = "down"
			}
			s.Members = append(s.Members, ms)
		}
	}
	sort.Slice(s.Members, func(i, j int) bool { return s.Members[i].ID < s.Members[j].ID })
	for _, ss := range n.cat.Sessions() {
		s.Sessions++
		if n.liveCopies(ss) < n.cfg.ReplicationFactor {
			s.UnderReplicated = append(s.UnderReplicated, ss.Name)
		}
	}
	return s
}

func (n *Node) liveCopies(s *Session) int {
	c := 0
	for _, id := range s.Replicas {
		if n.Alive(id) {
			c++
		}
	}
	return c
}

// WaitLeader blocks until a leader is known and this node registered.
func (n *Node) WaitLeader(ctx context.Context) error {
	for {
		if _, id := n.raft.LeaderWithID(); id != "" {
			if _, ok := n.cat.Member(n.cfg.NodeID); ok {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: waiting for a leader: %v", ErrNoQuorum, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// SyncCatalog waits until this node's catalog has applied everything the
// leader had applied when asked (a read barrier): a member that just
// restarted or was cut off may lag, and must not take a name missing from
// its copy for a session the cluster does not know. It fails with
// ErrNoQuorum when no leader answers.
func (n *Node) SyncCatalog(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var target uint64
	for {
		_, lid := n.raft.LeaderWithID()
		var err error
		switch {
		case lid == "":
			err = fmt.Errorf("%w: no leader known", ErrNoQuorum)
		case string(lid) == n.cfg.NodeID:
			if n.raft.State() == raft.Leader {
				// A new leader applies its predecessor's entries before it
				// serves: Barrier waits for that.
				if berr := n.raft.Barrier(time.Until(deadlineOf(ctx))).Error(); berr != nil {
					err = fmt.Errorf("%w: %v", ErrNoQuorum, berr)
				} else {
					return nil
				}
			} else {
				err = fmt.Errorf("%w: leadership changing", ErrNoQuorum)
			}
		default:
			m, ok := n.cat.Member(string(lid))
			if !ok {
				err = fmt.Errorf("%w: leader %s not in the catalog yet", ErrNoQuorum, lid)
				break
			}
			var pr pingReply
			if _, err = n.client.call(ctx, m.PeerAddr, popPing, struct{}{}, &pr); err == nil {
				target = pr.Applied
			}
		}
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: the catalog here could not be brought up to date: %v", ErrNoQuorum, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	for n.cat.AppliedIndex() < target {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: the catalog here is at index %d, the leader's at %d", ErrNoQuorum, n.cat.AppliedIndex(), target)
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

func deadlineOf(ctx context.Context) time.Time {
	if dl, ok := ctx.Deadline(); ok {
		return dl
	}
	return time.Now().Add(5 * time.Second)
}

// Snapshot forces a Raft snapshot (tests, operations).
func (n *Node) Snapshot() error { return n.raft.Snapshot().Error() }

// LeadershipTransfer hands leadership to another voter (rolling restarts).
func (n *Node) LeadershipTransfer() error { return n.raft.LeadershipTransfer().Error() }

// onApply runs after every applied command on every node: a deleted
// session's local copy goes; a move away from this node is logged.
func (n *Node) onApply(c *Command, r *Result) {
	if r != nil && r.Err != "" {
		return
	}
	switch c.Op {
	case opDelete:
		n.tombMu.Lock()
		if n.tombs == nil {
			n.tombs = map[string]tomb{}
		}
		now := time.Now()
		for k, t := range n.tombs {
			if now.Sub(t.at) > tombTTL {
				delete(n.tombs, k)
			}
		}
		n.tombs[c.Name] = tomb{epoch: c.Epoch, at: now}
		n.tombMu.Unlock()
		if n.store != nil && c.Node != n.cfg.NodeID {
			if dn, ok := n.store.(DeleteNotifier); ok {
				dn.Deleted(c.Name)
			}
			go func() {
				if err := n.store.Delete(context.Background(), c.Name); err != nil {
					n.log.Warn("deleting the local copy of a deleted session", "name", c.Name, "err", err)
				}
			}()
		}
	case opClaim:
		n.tombMu.Lock()
		delete(n.tombs, c.Name) // the name lives again
		n.tombMu.Unlock()
		if r.Session != nil && r.Session.Epoch > 1 && c.Node != n.cfg.NodeID {
			n.log.Debug("session moved", "name", c.Name, "to", c.Node, "epoch", r.Session.Epoch)
		}
	}
}

// onRestore runs after a catch-up snapshot: local copies of sessions
// deleted while this member was away go, as onApply's deletes would have.
func (n *Node) onRestore(deleted []string) {
	if n.store == nil {
		return
	}
	n.log.Info("dropping local copies of sessions deleted while this member was away", "sessions", len(deleted))
	dn, _ := n.store.(DeleteNotifier)
	n.tombMu.Lock()
	if n.tombs == nil {
		n.tombs = map[string]tomb{}
	}
	for _, name := range deleted {
		// The epoch it was deleted at is not in the snapshot: fence every
		// late write until the name is claimed again.
		n.tombs[name] = tomb{epoch: math.MaxUint64, at: time.Now()}
	}
	n.tombMu.Unlock()
	for _, name := range deleted {
		if dn != nil {
			dn.Deleted(name)
		}
	}
	go func() {
		for _, name := range deleted {
			if err := n.store.Delete(context.Background(), name); err != nil {
				n.log.Warn("deleting the local copy of a deleted session", "name", name, "err", err)
			}
		}
	}()
}

// tomb is a deleted name; tombTTL bounds how long one is kept (longer than
// any replication runs).
type tomb struct {
	epoch uint64
	at    time.Time
}

const tombTTL = 10 * time.Minute

// deletedAt reports the epoch name was deleted at, if it was recently.
func (n *Node) deletedAt(name string) (uint64, bool) {
	n.tombMu.Lock()
	defer n.tombMu.Unlock()
	t, ok := n.tombs[name]
	return t.epoch, ok
}

// Close stops the node (without leaving the cluster).
func (n *Node) Close() error {
	var err error
	n.once.Do(func() {
		n.connMu.Lock()
		close(n.stop)
		for c := range n.conns {
			c.Close()
		}
		n.connMu.Unlock()
		err = n.closeParts()
		n.wg.Wait()
	})
	return err
}

func (n *Node) closeParts() error {
	var errs []error
	if n.raft != nil {
		errs = append(errs, n.raft.Shutdown().Error())
	}
	if n.trans != nil {
		errs = append(errs, n.trans.Close())
	}
	if n.peerLn != nil {
		errs = append(errs, n.peerLn.Close())
	}
	if n.client != nil {
		n.client.closeAll()
	}
	if n.logs != nil {
		errs = append(errs, n.logs.Close())
	}
	return errors.Join(errs...)
}
