package daemon

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashmemory/flashmemory/cluster"
	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// ClusterConfig is the [cluster] table. Without it the daemon is a single
// host exactly as before: no Raft, no peer port, PERSIST at durability
// cluster refused.
type ClusterConfig struct {
	NodeID   string `toml:"node_id"`
	RaftAddr string `toml:"raft_addr"`
	PeerAddr string `toml:"peer_addr"`
	// RaftAdvertise and PeerAdvertise are the addresses other members dial
	// when they differ from the listening ones (NAT, a proxy, a container's
	// published port); default raft_addr and peer_addr.
	RaftAdvertise string `toml:"raft_advertise"`
	PeerAdvertise string `toml:"peer_advertise"`
	// Bootstrap lists "id=raft_addr" of the founding members; read on the
	// first start only (an empty list: join an existing cluster with
	// flashmemctl cluster join).
	Bootstrap         []string `toml:"bootstrap"`
	ReplicationFactor int      `toml:"replication_factor"`
	// SecretFile holds the shared secret (at least 16 bytes) every member
	// proves it knows on each Raft and peer connection.
	SecretFile string `toml:"secret_file"`
	// TLSCert, TLSKey and TLSCA turn on mutual TLS on both ports (all three
	// or none).
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	TLSCA   string `toml:"tls_ca"`
	// Dir holds the Raft log and snapshots (default data_dir/cluster).
	Dir string `toml:"dir"`
	// HeartbeatTimeout and ElectionTimeout tune failover (default 500ms).
	HeartbeatTimeout Duration `toml:"heartbeat_timeout"`
	ElectionTimeout  Duration `toml:"election_timeout"`
	// DownAfter: a member silent this long no longer counts as a copy and
	// its sessions are re-replicated (default 5s).
	DownAfter Duration `toml:"down_after"`
	// SnapshotThreshold is how many catalog entries trigger a Raft
	// snapshot (default 1024); a member back from a long absence catches up
	// from the latest snapshot.
	SnapshotThreshold uint64 `toml:"snapshot_threshold"`
	// SnapshotInterval is how often the threshold is checked (default 30s).
	SnapshotInterval Duration `toml:"snapshot_interval"`
	// ReplicaSync is when a replica acknowledges pages and metadata it
	// received: "fsync" (default) after they are synced to its disk;
	// "write" once they are verified and written to its journal (the
	// kernel's page cache: they survive the death of any process, not the
	// loss of power of that host), with the sync run in the background
	// after each session's metadata. The owner's own copy is synced either
	// way (docs/cluster.md, failure modes).
	ReplicaSync string `toml:"replica_sync"`
	// ReplicationStreams is how many page batches an owner keeps in flight
	// to each replica (default 4); ReplicationBatchBytes bounds one batch
	// (default 8 MiB). More or larger batches help when the replica's disk
	// wants deeper queues; they cost that much more memory per replica.
	ReplicationStreams    int `toml:"replication_streams"`
	ReplicationBatchBytes int `toml:"replication_batch_bytes"`
}

func (c *ClusterConfig) validate() []string {
	if c == nil {
		return nil
	}
	var errs []string
	if c.NodeID == "" || len(c.NodeID) > 255 || strings.ContainsAny(c.NodeID, "= \t\n") {
		errs = append(errs, "cluster.node_id must be 1-255 bytes without '=' or spaces")
	}
	for k, v := range map[string]string{"cluster.raft_addr": c.RaftAddr, "cluster.peer_addr": c.PeerAddr,
		"cluster.raft_advertise": cmp.Or(c.RaftAdvertise, c.RaftAddr), "cluster.peer_advertise": cmp.Or(c.PeerAdvertise, c.PeerAddr)} {
		if _, _, err := net.SplitHostPort(v); err != nil {
			errs = append(errs, fmt.Sprintf("%s %q is not host:port", k, v))
		}
	}
	if _, err := cluster.ParseBootstrap(c.Bootstrap); err != nil {
		errs = append(errs, err.Error())
	}
	if c.ReplicationFactor < 0 || c.ReplicationFactor > 7 {
		errs = append(errs, "cluster.replication_factor must be 1-7 (default 2)")
	}
	if c.SecretFile == "" {
		errs = append(errs, "cluster.secret_file is required: members authenticate each other with it")
	}
	switch c.ReplicaSync {
	case "", "fsync", "write":
	default:
		errs = append(errs, fmt.Sprintf("cluster.replica_sync %q: use \"fsync\" (default) or \"write\"", c.ReplicaSync))
	}
	if c.ReplicationStreams < 0 || c.ReplicationStreams > 64 {
		errs = append(errs, "cluster.replication_streams must be 1-64 (default 4)")
	}
	if c.ReplicationBatchBytes < 0 || (c.ReplicationBatchBytes > 0 && c.ReplicationBatchBytes < 1<<20) || c.ReplicationBatchBytes > 256<<20 {
		errs = append(errs, "cluster.replication_batch_bytes must be 1 MiB to 256 MiB (default 8 MiB)")
	}
	if n := btoi(c.TLSCert != "") + btoi(c.TLSKey != "") + btoi(c.TLSCA != ""); n != 0 && n != 3 {
		errs = append(errs, "cluster.tls_cert, tls_key and tls_ca go together")
	}
	return errs
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// clusterState is the daemon's side of the cluster.
type clusterState struct {
	node *cluster.Node
	// pending maps names to the local id pages of a replicated session are
	// written under before its metadata arrives.
	mu      sync.Mutex
	pending map[string]uint64
	// acquired: the epoch a just-finished RESUME claimed, for loadSession
	// (the local catalog may lag the commit by a moment).
	acquired map[string]uint64
	// deleted holds names whose delete the catalog applied while their local
	// copy (a replica's) is still being removed: RESUME must not revive it.
	deleted map[string]bool
	store   *clusterStore
}

// openCluster starts Raft and the peer port when [cluster] is configured.
func (d *Daemon) openCluster() error {
	cc := d.cfg.Cluster
	if cc == nil {
		return nil
	}
	secret, err := os.ReadFile(cc.SecretFile)
	if err != nil {
		return fmt.Errorf("%w: cluster.secret_file: %v (create it with e.g. `head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE` and copy it to every member)", ErrConfig, err)
	}
	secret = []byte(strings.TrimSpace(string(secret)))
	dir := cc.Dir
	if dir == "" {
		dir = filepath.Join(d.cfg.DataDir, "cluster")
	}
	cfg := cluster.Config{NodeID: cc.NodeID, RaftAddr: cc.RaftAddr, PeerAddr: cc.PeerAddr, Dir: dir,
		RaftAdvertise: cc.RaftAdvertise, PeerAdvertise: cc.PeerAdvertise,
		Bootstrap: cc.Bootstrap, ReplicationFactor: cc.ReplicationFactor, Secret: secret,
		CapacityBytes: d.cfg.Host.BudgetBytes, GPUs: len(d.gpu.devs), Logger: d.log.With("subsystem", "cluster"),
		HeartbeatTimeout: time.Duration(cc.HeartbeatTimeout), ElectionTimeout: time.Duration(cc.ElectionTimeout),
		DownAfter: time.Duration(cc.DownAfter), SnapshotThreshold: cc.SnapshotThreshold,
		SnapshotInterval: time.Duration(cc.SnapshotInterval),
		SendStreams:      cc.ReplicationStreams, BatchBytes: cc.ReplicationBatchBytes}
	if cc.TLSCert != "" {
		if cfg.ServerTLS, cfg.ClientTLS, err = clusterTLS(cc); err != nil {
			return err
		}
	}
	st := &clusterState{pending: map[string]uint64{}, acquired: map[string]uint64{}, deleted: map[string]bool{}}
	d.cl = st
	st.store = &clusterStore{d: d, writeOnly: cc.ReplicaSync == "write", keepDir: filepath.Join(dir, "kept")}
	if st.node, err = cluster.Open(cfg, st.store); err != nil {
		d.cl = nil
		return fmt.Errorf("cluster: %w", err)
	}
	d.m.reg.MustRegister(&clusterCollector{d: d})
	d.log.Info("cluster member started", "node", cc.NodeID, "raft_addr", cc.RaftAddr, "peer_addr", cc.PeerAddr, "replication_factor", cfg.ReplicationFactor, "replica_sync", cmp.Or(cc.ReplicaSync, "fsync"))
	return nil
}

func clusterTLS(cc *ClusterConfig) (*tls.Config, *tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(cc.TLSCert, cc.TLSKey)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: cluster TLS key pair: %v", ErrConfig, err)
	}
	ca, err := os.ReadFile(cc.TLSCA)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: cluster.tls_ca: %v", ErrConfig, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, nil, fmt.Errorf("%w: cluster.tls_ca has no PEM certificate", ErrConfig)
	}
	srv := &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	cli := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}
	return srv, cli, nil
}

func (d *Daemon) closeCluster() {
	if d.cl != nil {
		if err := d.cl.node.Close(); err != nil {
			d.log.Warn("stopping the cluster member", "err", err)
		}
		d.cl.store.bg.Wait() // a deferred replica sync, before the store closes
	}
}

// clusterOwns refuses writes to a session whose ownership moved: the
// catalog names another node, or a newer epoch than the one s holds. A
// session not in the catalog is local and always this node's.
func (d *Daemon) clusterOwns(s *session) error {
	if d.cl == nil || s.name == "" || !s.persist {
		return nil
	}
	owner, epoch, ok := d.cl.node.Owner(s.name)
	if !ok {
		if s.epoch != 0 {
			// It was in the catalog (claims wait until the local catalog
			// has them): deleted since, by its owner of a later epoch. Its
			// metadata must not be written back here.
			return proto.CodeUnknownSession.Errorf("session %q was deleted from the cluster after this node held it (epoch %d): it is gone on every node; OPEN it again to start over", s.name, s.epoch)
		}
		return nil
	}
	if epoch < s.epoch {
		return nil // the local catalog has not applied our own claim yet
	}
	if owner != d.cl.node.ID() || epoch != s.epoch {
		return proto.CodeNotOwner.Errorf("session %q moved to node %s (epoch %d; this node holds %d): RESUME it there, or RESUME it here to move it back",
			s.name, owner, epoch, s.epoch)
	}
	return nil
}

// clusterPersist replicates s after a local PERSIST; s.mu is held, so the
// pages and metadata cannot change under the copy.
func (d *Daemon) clusterPersist(ctx context.Context, s *session) error {
	if d.cl == nil {
		return proto.CodeBadRequest.Errorf("this daemon has no [cluster] table: PERSIST with durability local, or configure a cluster (docs/cluster.md)")
	}
	n := d.cl.node
	if s.epoch == 0 {
		owner, epoch, ok := n.Owner(s.name)
		switch {
		case ok && owner != n.ID():
			return proto.CodeSessionExists.Errorf("session %q exists in the cluster, owned by %s: RESUME it instead of opening it again", s.name, owner)
		case ok:
			s.epoch = epoch
		default:
			sess, err := n.Claim(ctx, s.name, s.owner.UID, s.owner.GID)
			if err != nil {
				return fmt.Errorf("session %q: %w", s.name, err)
			}
			s.epoch = sess.Epoch
		}
	}
	layout, _ := json.Marshal(s.layout)
	policy, _ := json.Marshal(s.policy)
	// The generations the metadata just written names (writeMetaLocked's),
	// so the pages start streaming while the metadata blob is read back.
	gens := make([]uint64, max(int(s.pages()), len(s.gens)))
	copy(gens, s.gens)
	res, err := n.Persist(ctx, cluster.SessionInfo{Name: s.name, OwnerUID: s.owner.UID, OwnerGID: s.owner.GID,
		Model: s.model, Layout: layout, Policy: policy, Chunks: s.chunks, Gens: gens}, s.epoch)
	if err != nil {
		return fmt.Errorf("session %q: %w", s.name, err)
	}
	d.log.Info("session replicated", "name", s.name, "replicas", res.Replicas, "pages_sent", res.PagesSent, "bytes", res.BytesSent, "epoch", s.epoch)
	return nil
}

// clusterResume runs before RESUME's local path: a session the catalog
// knows is claimed for this node (an epoch bump if another node owned it)
// and its missing or damaged pages are pulled from replicas. The caller
// then loads it from SSD as any persisted session.
func (d *Daemon) clusterResume(name string, c *conn) error {
	_, err := d.clusterAcquire(name, func(owner Cred) bool { return sameOwner(owner, c.cred) })
	return err
}

// clusterVerify is VERIFY's cluster part for a named session in the
// catalog: it is resumed on this node (pulling what this node lacks), and
// every page is checked against the committed manifest.
func (d *Daemon) clusterVerify(c *conn, t *proto.AdminTarget) (*proto.ClusterVerify, error) {
	if d.cl == nil || t.Name == "" {
		return nil, nil
	}
	ar, err := d.clusterAcquire(t.Name, func(owner Cred) bool { return d.access.mayActOn(owner, c.cred) })
	if err != nil || ar == nil {
		return nil, err
	}
	return &proto.ClusterVerify{Owner: d.cl.node.ID(), Epoch: ar.Epoch, Manifest: ar.Pages, Verified: ar.Verified,
		Pulled: ar.Pulled, Healed: ar.Healed, Bad: ar.Bad, Moved: ar.Moved}, nil
}

func (d *Daemon) clusterAcquire(name string, may func(owner Cred) bool) (*cluster.AcquireResult, error) {
	if d.cl == nil {
		return nil, nil
	}
	n := d.cl.node
	sess, ok := n.Catalog().Session(name)
	if !ok {
		// Not in this node's copy of the catalog: make sure the copy is
		// current (a member back from a crash or a partition lags) before
		// treating the name as a local session, else a stale local copy
		// of a cluster session would be served.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := n.SyncCatalog(ctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("session %q: this node cannot confirm with the cluster's leader whether it is a cluster session (its catalog may be behind); RESUME again when a majority of members is reachable: %w", name, err)
		}
		sess, ok = n.Catalog().Session(name)
	}
	if !ok {
		d.cl.mu.Lock()
		gone := d.cl.deleted[name]
		d.cl.mu.Unlock()
		if gone {
			return nil, proto.CodeUnknownSession.Errorf("session %q was deleted from the cluster (flashmemctl sessions lists yours)", name)
		}
		return nil, nil
	}
	if !may(Cred{UID: sess.OwnerUID, GID: sess.OwnerGID}) {
		return nil, proto.CodeNotOwner.Errorf("session %q belongs to uid %d", name, sess.OwnerUID)
	}
	d.mu.Lock()
	s := d.byName[name]
	d.mu.Unlock()
	if s != nil {
		s.mu.Lock()
		fresh := s.req != nil && sess.Owner == n.ID() && sess.Epoch == s.epoch
		s.mu.Unlock()
		if fresh {
			return &cluster.AcquireResult{Session: sess, Epoch: sess.Epoch, Pages: len(sess.Pages), Verified: len(sess.Pages)}, nil
		}
		d.forgetSession(s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ar, err := n.Acquire(ctx, name)
	if err != nil {
		return ar, fmt.Errorf("resuming %q from the cluster: %w", name, err)
	}
	d.cl.mu.Lock()
	d.cl.acquired[name] = ar.Epoch
	d.cl.mu.Unlock()
	d.log.Info("session acquired from the cluster", "name", name, "epoch", ar.Epoch, "moved", ar.Moved,
		"pages", ar.Pages, "pulled", ar.Pulled, "healed", ar.Healed)
	return ar, nil
}

// clusterAdmin is the CLUSTER op: status for anyone allowed to connect;
// join and remove for root and admin_groups.
func (c *conn) clusterAdmin(m *proto.ClusterRequest) (*proto.ClusterReply, error) {
	d := c.d
	if d.cl == nil {
		return nil, proto.CodeBadRequest.Errorf("this daemon has no [cluster] table (docs/cluster.md)")
	}
	n := d.cl.node
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if m.Action != "status" && !d.access.admin(c.cred) {
		return nil, proto.CodePermissionDenied.Errorf("cluster %s needs root or a member of admin_groups", m.Action)
	}
	switch m.Action {
	case "join":
		if err := n.Join(ctx, m.Addr); err != nil {
			return nil, err
		}
		d.log.Info("joined the cluster", "through", m.Addr)
	case "remove":
		if err := n.Remove(ctx, m.ID); err != nil {
			return nil, err
		}
	}
	st := n.Status()
	r := &proto.ClusterReply{Node: st.Node, State: st.State, Leader: st.Leader, LeaderAddr: st.LeaderAddr, Term: st.Term,
		CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex, LastSnapshot: st.LastSnapshot, Sessions: st.Sessions,
		UnderReplicated: st.UnderReplicated, ReplicationFactor: st.ReplicationRF}
	for _, ms := range st.Members {
		lc := ""
		if !ms.LastContact.IsZero() {
			lc = ms.LastContact.UTC().Format(time.RFC3339Nano)
		}
		r.Members = append(r.Members, proto.ClusterMember{ID: ms.ID, Address: ms.Address, PeerAddress: ms.PeerAddress,
			Suffrage: ms.Suffrage, State: ms.State, LastContact: lc})
	}
	return r, nil
}

// clusterEpoch is the epoch a session loaded from SSD holds: the one its
// RESUME just claimed, else the catalog's if this node owns it.
func (d *Daemon) clusterEpoch(name string) uint64 {
	if d.cl == nil {
		return 0
	}
	d.cl.mu.Lock()
	e, ok := d.cl.acquired[name]
	delete(d.cl.acquired, name)
	d.cl.mu.Unlock()
	if ok {
		return e
	}
	if owner, epoch, ok := d.cl.node.Owner(name); ok && owner == d.cl.node.ID() {
		return epoch
	}
	return 0
}

// clusterDelete removes a session from the catalog, before its local copy
// goes: a DELETE the catalog did not commit is refused (UNAVAILABLE when no
// majority is reachable), so an acknowledged DELETE never comes back from
// a replica. Applying the delete makes every node, this one included, drop
// its copy (cluster.DeleteNotifier).
func (d *Daemon) clusterDelete(name string, epoch uint64) error {
	if d.cl == nil || name == "" || epoch == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.cl.node.Delete(ctx, name, epoch); err != nil {
		return fmt.Errorf("session %q: removing it from the cluster catalog failed, so nothing was deleted: %w", name, err)
	}
	return nil
}

// forgetSession drops a session from memory without writing anything: its
// copy here is stale (ownership moved), so neither its pages nor its
// metadata may overwrite what the cluster committed.
func (d *Daemon) forgetSession(s *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.req == nil {
		return
	}
	s.waitPending()
	d.unregisterLocked(s)
	s.leaseMu.Lock()
	for _, l := range s.leases {
		if l.c != nil {
			l.c.mu.Lock()
			delete(l.c.leases, l.id)
			l.c.mu.Unlock()
		}
	}
	s.leases = map[uint64]*lease{}
	s.leaseMu.Unlock()
	s.destroyRegion(d)
	if err := d.store.Mirror().DeleteSession(context.Background(), s.id); err != nil {
		d.log.Warn("dropping a stale session from the mirror", "session", s.id, "err", err)
	}
	if err := s.req.Close(); err != nil {
		d.log.Warn("releasing the session's index keys", "session", s.id, "err", err)
	}
	s.req = nil
	d.log.Info("stale copy of a session dropped from memory: it moved to another node", "session", s.id, "name", s.name)
}

// healPages fetches from replicas the pages of a recall that failed their
// checksum here, when the committed manifest names the generation the
// session holds, and writes them back to the store; it returns the recall
// items to run again. s.mu is held (the cycle owns the session).
func (d *Daemon) healPages(s *session, results []tiers.RecallResult) []tiers.RecallItem {
	if d.cl == nil || s.name == "" || !s.persist {
		return nil
	}
	var items []tiers.RecallItem
	for _, r := range results {
		if r.Err == nil || !errors.Is(r.Err, tiers.ErrIntegrity) {
			continue
		}
		p := r.ID.Page
		want := s.genOf(p)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		gen, data, err := d.cl.node.FetchPage(ctx, s.name, p)
		if err == nil && gen == want {
			err = d.store.Write(ctx, r.ID, gen, data)
		} else if err == nil {
			err = fmt.Errorf("the replicas hold generation %d, the session %d", gen, want)
		}
		cancel()
		if err != nil {
			d.log.Warn("damaged page could not be healed from a replica", "session", s.id, "name", s.name, "page", p, "err", err)
			continue
		}
		d.log.Warn("damaged page healed from a replica", "session", s.id, "name", s.name, "page", p, "generation", gen)
		items = append(items, tiers.RecallItem{ID: r.ID, Slot: r.Slot, Gen: gen})
	}
	return items
}

// clusterStore adapts the tiers to cluster.Store. Names map to this node's
// local session ids through the metadata records; metadata blobs travel in
// a canonical form (local id 0) so every copy has the same checksum.
type clusterStore struct {
	d    *Daemon
	mu   sync.Mutex
	geom map[string]pageGeom
	// writeOnly: replica_sync = "write" (acknowledge once written, sync in
	// the background).
	writeOnly bool
	bg        sync.WaitGroup
	syncMu    sync.Mutex
	syncing   bool // a background sync runs
	syncAgain bool // and another must follow it
	// syncErrors counts failed background syncs (metrics).
	syncErrors atomic.Uint64
	// vers: per name, the last metadata versions Meta produced here (the
	// owner makes deltas from the one a replica holds); held: per name, the
	// version this node holds as a replica and where its chain stands.
	vers map[string][]metaVer
	held map[string]heldMeta
	// keepDir holds, per name, the committed metadata version a replica
	// write replaced before its commit (cluster.MetaVersions).
	keepDir string
}

type metaVer struct {
	crc    uint32
	chunks uint64
	gens   []uint64
}

type heldMeta struct {
	crc uint32
	pos tiers.MetaPos
}

var _ cluster.MetaDeltas = (*clusterStore)(nil)

type pageGeom struct {
	id        uint64
	pageBytes int
}

var _ cluster.Store = (*clusterStore)(nil)

func (cs *clusterStore) localID(name string, create bool) (uint64, bool) {
	d := cs.d
	if id, ok := d.store.SSD().MetaSession(name); ok && id != 0 {
		return id, true
	}
	d.cl.mu.Lock()
	defer d.cl.mu.Unlock()
	if id, ok := d.cl.pending[name]; ok {
		return id, true
	}
	// A WriteMeta of name (the metadata travels alongside the pages) may
	// have stored it and dropped the pending id since the check above.
	if id, ok := d.store.SSD().MetaSession(name); ok && id != 0 {
		return id, true
	}
	if !create {
		return 0, false
	}
	d.mu.Lock()
	d.nextID++
	id := d.nextID
	d.mu.Unlock()
	d.cl.pending[name] = id
	return id, true
}

func (cs *clusterStore) localMeta(ctx context.Context, name string) (*sessionMeta, []byte, error) {
	blob, err := cs.d.store.SSD().GetMeta(ctx, name)
	if err != nil {
		if errors.Is(err, tiers.ErrNotFound) {
			return nil, nil, fmt.Errorf("%w: %q has no copy here", cluster.ErrNotFound, name)
		}
		return nil, nil, err
	}
	return decodeMeta(blob)
}

// Meta implements cluster.Store.
func (cs *clusterStore) Meta(ctx context.Context, name string) ([]byte, []uint64, error) {
	m, state, err := cs.localMeta(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	blob, err := encodeCanonical(m, state)
	if err == nil {
		v := metaVer{crc: cluster.Checksum(blob), chunks: m.Chunks, gens: m.Gens}
		cs.mu.Lock()
		if cs.vers == nil {
			cs.vers = map[string][]metaVer{}
		}
		vs := append(cs.vers[name], v)
		if len(vs) > 4 {
			vs = vs[len(vs)-4:]
		}
		cs.vers[name] = vs
		cs.mu.Unlock()
	}
	return blob, m.Gens, err
}

// MetaDelta implements cluster.MetaDeltas on the owner: the delta from the
// version a replica holds (remembered when Meta produced it) to cur, made
// as the daemon's own metadata deltas (the live session's indexer delta
// since that version's chunk count, the changed generations). Its caller
// is the cluster PERSIST, which holds the session's lock.
func (cs *clusterStore) MetaDelta(ctx context.Context, name string, from uint32, cur []byte) ([]byte, bool) {
	cs.mu.Lock()
	var base *metaVer
	for i := range cs.vers[name] {
		if v := cs.vers[name][i]; v.crc == from {
			base = &v
		}
	}
	cs.mu.Unlock()
	if base == nil {
		return nil, false
	}
	m, _, err := decodeMeta(cur)
	if err != nil {
		return nil, false
	}
	d := cs.d
	d.mu.Lock()
	s := d.byName[name]
	d.mu.Unlock()
	if s == nil || s.req == nil || uint64(s.req.Len()) != m.Chunks || base.chunks > m.Chunks {
		return nil, false
	}
	state, err := s.req.MarshalDelta(int(base.chunks))
	if err != nil {
		return nil, false
	}
	delta, err := encodeSessionDeltaFor(m, base.gens, state)
	if err != nil {
		return nil, false
	}
	return delta, true
}

// ApplyMetaDelta implements cluster.MetaDeltas on a replica: the delta is
// appended to the chain of the version this node holds (with its local
// id), and the merged result must be version to; the sender sends the
// whole blob on any error, which replaces a chain a bad delta extended.
func (cs *clusterStore) ApplyMetaDelta(ctx context.Context, name string, from, to uint32, delta []byte) error {
	cs.mu.Lock()
	h, ok := cs.held[name]
	cs.mu.Unlock()
	if !ok || h.crc != from {
		return fmt.Errorf("%w: %q: this replica does not hold metadata version %08x", cluster.ErrNotFound, name, from)
	}
	id, ok := cs.d.store.SSD().MetaSession(name)
	if !ok || id == 0 {
		return fmt.Errorf("%w: %q has no metadata here", cluster.ErrNotFound, name)
	}
	dm, st, err := decodeMetaDelta(delta)
	if err != nil {
		return err
	}
	dm.ID = id
	dm.Saved = time.Now()
	local, err := encodeMetaDelta(dm, st)
	if err != nil {
		return err
	}
	if float64(h.pos.DeltaBytes+int64(len(local))) > metaFullEvery*float64(h.pos.BaseBytes) {
		return fmt.Errorf("%w: %q: the metadata chain is long, send it whole", cluster.ErrNotFound, name)
	}
	pos, err := cs.d.store.SSD().PutMetaDelta(ctx, name, id, h.pos.Seq, local)
	if err != nil {
		return fmt.Errorf("replica metadata delta of %q: %w", name, err)
	}
	cs.mu.Lock()
	delete(cs.held, name) // until the result is checked
	cs.mu.Unlock()
	blob, _, err := cs.Meta(ctx, name)
	if err != nil {
		return err
	}
	if got := cluster.Checksum(blob); got != to {
		return fmt.Errorf("%w: metadata of %q after the delta is version %08x, want %08x", cluster.ErrChecksum, name, got, to)
	}
	if err := cs.syncMeta(); err != nil {
		return err
	}
	cs.mu.Lock()
	if cs.held == nil {
		cs.held = map[string]heldMeta{}
	}
	cs.held[name] = heldMeta{crc: to, pos: pos}
	cs.mu.Unlock()
	return nil
}

// syncMeta makes replicated metadata durable as replica_sync says.
func (cs *clusterStore) syncMeta() error {
	if cs.writeOnly {
		cs.syncLater()
		return nil
	}
	return cs.d.store.SSD().Sync()
}

// pageGeom returns the local id and page size of name's copy, decoding its
// metadata (which carries the indexer state: tens of MB for a long
// session) only when the id changed since the last call.
func (cs *clusterStore) pageGeom(ctx context.Context, name string) (uint64, int, error) {
	id, ok := cs.d.store.SSD().MetaSession(name)
	if ok {
		cs.mu.Lock()
		g, hit := cs.geom[name]
		cs.mu.Unlock()
		if hit && g.id == id {
			return id, g.pageBytes, nil
		}
	}
	m, _, err := cs.localMeta(ctx, name)
	if err != nil {
		return 0, 0, err
	}
	pb := tiersLayout(m.Layout).PageBytes()
	cs.mu.Lock()
	if cs.geom == nil {
		cs.geom = map[string]pageGeom{}
	}
	cs.geom[name] = pageGeom{id: m.ID, pageBytes: pb}
	cs.mu.Unlock()
	return m.ID, pb, nil
}

// ReadPage implements cluster.Store: from the mirror or SSD, verified.
func (cs *clusterStore) ReadPage(ctx context.Context, name string, page uint32) (uint64, []byte, error) {
	id, pb, err := cs.pageGeom(ctx, name)
	if err != nil {
		return 0, nil, err
	}
	buf := make([]byte, pb)
	gen, _, err := cs.d.store.Read(ctx, tiers.PageID{Session: id, Page: page}, buf)
	if err != nil {
		if errors.Is(err, tiers.ErrNotFound) {
			return 0, nil, fmt.Errorf("%w: page %d of %q", cluster.ErrNotFound, page, name)
		}
		return 0, nil, err
	}
	return gen, buf, nil
}

// WritePages implements cluster.Store: straight to SSD, synced. A copy of
// the session in memory here is stale (another node owns it now) and is
// dropped first so the mirror cannot serve old bytes.
func (cs *clusterStore) WritePages(ctx context.Context, name string, pages []cluster.PageData) error {
	d := cs.d
	d.mu.Lock()
	s := d.byName[name]
	d.mu.Unlock()
	if s != nil {
		if owner, _, ok := d.cl.node.Owner(name); !ok || owner != d.cl.node.ID() {
			d.forgetSession(s)
		}
	}
	id, _ := cs.localID(name, true)
	writes := make([]tiers.PageWrite, len(pages))
	for i, p := range pages {
		writes[i] = tiers.PageWrite{ID: tiers.PageID{Session: id, Page: p.Page}, Gen: p.Gen, Page: p.Data}
	}
	if err := d.store.SSD().PutBatch(ctx, writes); err != nil {
		return fmt.Errorf("replica pages of %q: %w", name, err)
	}
	if cs.writeOnly {
		return nil // synced after the session's metadata, in the background
	}
	// Several PUT_PAGES finishing at once share one fdatasync: SSD.Sync is
	// group commit per segment.
	return d.store.SSD().Sync()
}

// WriteMeta implements cluster.Store: the canonical blob gets this node's
// local id and is synced after the pages it names.
func (cs *clusterStore) WriteMeta(ctx context.Context, name string, blob []byte) error {
	m, state, err := decodeMeta(blob)
	if err != nil {
		return err
	}
	id, _ := cs.localID(name, true)
	m.ID = id
	m.Saved = time.Now()
	local, err := encodeMeta(m, state)
	if err != nil {
		return err
	}
	pos, err := cs.d.store.SSD().PutMetaBase(ctx, name, id, local)
	if err != nil {
		return fmt.Errorf("replica metadata of %q: %w", name, err)
	}
	if err := cs.syncMeta(); err != nil {
		return err
	}
	cs.mu.Lock()
	if cs.held == nil {
		cs.held = map[string]heldMeta{}
	}
	cs.held[name] = heldMeta{crc: cluster.Checksum(blob), pos: pos}
	cs.mu.Unlock()
	cs.d.cl.mu.Lock()
	delete(cs.d.cl.pending, name)
	cs.d.cl.mu.Unlock()
	return nil
}

// syncLater syncs the SSD tier in the background (replica_sync = "write").
// Calls while one runs coalesce into one more sync after it, so the
// replica's disk sees one fsync per burst of replication, not one per
// batch.
func (cs *clusterStore) syncLater() {
	cs.syncMu.Lock()
	defer cs.syncMu.Unlock()
	if cs.syncing {
		cs.syncAgain = true
		return
	}
	cs.syncing = true
	cs.bg.Add(1)
	go func() {
		defer cs.bg.Done()
		for {
			if err := cs.d.store.SSD().Sync(); err != nil {
				cs.syncErrors.Add(1)
				cs.d.log.Error("deferred sync of replicated pages failed: they are in the page cache only; check the disk, then PERSIST the sessions again from their owners", "err", err)
			}
			cs.syncMu.Lock()
			if !cs.syncAgain {
				cs.syncing = false
				cs.syncMu.Unlock()
				return
			}
			cs.syncAgain = false
			cs.syncMu.Unlock()
		}
	}()
}

var (
	_ cluster.MetaVersions = (*clusterStore)(nil)
	_ cluster.PageTrimmer  = (*clusterStore)(nil)
)

// canonicalMeta is a local metadata blob in the form every copy shares
// (local id 0, no save time), whose CRC the catalog names.
func canonicalMeta(blob []byte) ([]byte, error) {
	m, state, err := decodeMeta(blob)
	if err != nil {
		return nil, err
	}
	return encodeCanonical(m, state)
}

// encodeCanonical encodes m in the canonical form (see canonicalMeta).
func encodeCanonical(m *sessionMeta, state []byte) ([]byte, error) {
	c := *m
	c.ID = 0
	c.Saved = time.Time{}
	return encodeMeta(&c, state)
}

// keepPath is where name's kept metadata version lives (hashed: names may
// hold any character).
func (cs *clusterStore) keepPath(name string) string {
	return filepath.Join(cs.keepDir, fmt.Sprintf("%08x-%d.meta", cluster.Checksum([]byte(name)), len(name)))
}

// MetaVersion implements cluster.MetaVersions: the current version, an
// earlier one of the record chain (a delta of a PERSIST that was never
// committed follows it), or the kept one. Each candidate is checked
// against crc, which also tells names sharing a keep file apart.
func (cs *clusterStore) MetaVersion(ctx context.Context, name string, crc uint32) ([]byte, bool) {
	if blob, _, err := cs.Meta(ctx, name); err == nil && cluster.Checksum(blob) == crc {
		return blob, true
	}
	if c, err := cs.d.store.SSD().ReadMetaChain(ctx, name); err == nil {
		for k := len(c.Deltas) - 1; k >= 0; k-- {
			merged := c.Base
			if k > 0 {
				b, used, err := mergeMeta(c.Base, c.Deltas[:k])
				if err != nil || used < k {
					continue
				}
				merged = b
			}
			if canon, err := canonicalMeta(merged); err == nil && cluster.Checksum(canon) == crc {
				return canon, true
			}
		}
	}
	if b, err := os.ReadFile(cs.keepPath(name)); err == nil && cluster.Checksum(b) == crc {
		return b, true
	}
	return nil, false
}

// KeepMeta implements cluster.MetaVersions: the version is written to the
// keep file and synced before the write that replaces it proceeds.
func (cs *clusterStore) KeepMeta(ctx context.Context, name string, crc uint32) error {
	path := cs.keepPath(name)
	if b, err := os.ReadFile(path); err == nil && cluster.Checksum(b) == crc {
		return nil
	}
	blob, ok := cs.MetaVersion(ctx, name, crc)
	if !ok {
		return nil // this node does not hold it: nothing to keep
	}
	if err := os.MkdirAll(cs.keepDir, 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(blob)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	dir, err := os.Open(cs.keepDir)
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}

// DropPagesExcept implements cluster.PageTrimmer.
func (cs *clusterStore) DropPagesExcept(ctx context.Context, name string, keep []cluster.PageEntry) error {
	id, ok := cs.localID(name, false)
	if !ok {
		return nil
	}
	ssd := cs.d.store.SSD()
	pages, err := ssd.Pages(ctx, id)
	if err != nil {
		return err
	}
	for _, p := range pages {
		if int(p) < len(keep) && keep[p].Gen != 0 {
			if g, ok := ssd.Generation(tiers.PageID{Session: id, Page: p}); ok && g == keep[p].Gen {
				continue
			}
		}
		if err := cs.d.store.Delete(ctx, tiers.PageID{Session: id, Page: p}); err != nil && !errors.Is(err, tiers.ErrNotFound) {
			return err
		}
	}
	return nil
}

// Delete implements cluster.Store.
func (cs *clusterStore) Delete(ctx context.Context, name string) error {
	d := cs.d
	d.mu.Lock()
	s := d.byName[name]
	d.mu.Unlock()
	if s != nil {
		d.forgetSession(s)
	}
	id, ok := cs.localID(name, false)
	if ok {
		// Metadata first: a crash in between leaves pages no metadata names,
		// which the next start removes, never metadata without its pages.
		if err := d.store.SSD().DeleteMeta(ctx, name); err != nil && !errors.Is(err, tiers.ErrNotFound) {
			return err
		}
		if err := d.store.Drop(ctx, id); err != nil {
			return err
		}
	}
	d.cl.mu.Lock()
	delete(d.cl.pending, name)
	delete(d.cl.deleted, name)
	d.cl.mu.Unlock()
	if cs.keepDir != "" {
		if err := os.Remove(cs.keepPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			cs.d.log.Warn("removing the kept metadata of a deleted session", "name", name, "err", err)
		}
	}
	cs.mu.Lock()
	delete(cs.held, name)
	delete(cs.vers, name)
	cs.mu.Unlock()
	return nil
}

// Deleted implements cluster.DeleteNotifier.
func (cs *clusterStore) Deleted(name string) {
	cs.d.cl.mu.Lock()
	cs.d.cl.deleted[name] = true
	cs.d.cl.mu.Unlock()
}

// clusterCollector exports Raft and replication state at scrape time.
type clusterCollector struct{ d *Daemon }

var (
	descClLeader    = prometheus.NewDesc("flashmem_cluster_leader", "1 if this node leads the catalog's Raft group.", nil, nil)
	descClTerm      = prometheus.NewDesc("flashmem_cluster_term", "Current Raft term.", nil, nil)
	descClCommit    = prometheus.NewDesc("flashmem_cluster_commit_index", "Raft commit index.", nil, nil)
	descClApplied   = prometheus.NewDesc("flashmem_cluster_applied_index", "Raft index applied to the catalog here.", nil, nil)
	descClMembers   = prometheus.NewDesc("flashmem_cluster_members", "Members by state (alive, down, unknown, leader).", []string{"state"}, nil)
	descClSessions  = prometheus.NewDesc("flashmem_cluster_sessions", "Sessions in the catalog.", nil, nil)
	descClUnder     = prometheus.NewDesc("flashmem_cluster_under_replicated_sessions", "Sessions with fewer live copies than replication_factor.", nil, nil)
	descClBytes     = prometheus.NewDesc("flashmem_cluster_replication_bytes_total", "Page bytes over the peer port: sent (to replicas), received (as a replica), served (to pulling nodes).", []string{"dir"}, nil)
	descClPulled    = prometheus.NewDesc("flashmem_cluster_pulled_pages_total", "Pages pulled from replicas on RESUME or verify.", nil, nil)
	descClHeals     = prometheus.NewDesc("flashmem_cluster_self_heals_total", "Pages that failed their checksum here and were re-fetched from a replica.", nil, nil)
	descClCRC       = prometheus.NewDesc("flashmem_cluster_checksum_failures_total", "Pages that arrived or were read with a CRC32C mismatch.", nil, nil)
	descClRerep     = prometheus.NewDesc("flashmem_cluster_rereplications_total", "Sessions copied to new members after a replica was lost.", nil, nil)
	descClRefused   = prometheus.NewDesc("flashmem_cluster_refused_connections_total", "Raft or peer connections that failed the shared-secret challenge.", nil, nil)
	descClCommitLat = prometheus.NewDesc("flashmem_cluster_commit_seconds", "Catalog commit latency over recent commits from this node.", []string{"quantile"}, nil)
	descClMetaDelta = prometheus.NewDesc("flashmem_cluster_metadata_deltas_total", "Metadata sent to a replica as a delta from the version it held (instead of whole).", nil, nil)
	descClSyncErr   = prometheus.NewDesc("flashmem_cluster_replica_sync_errors_total", "Deferred syncs of replicated pages that failed (replica_sync = \"write\").", nil, nil)
	descClLag       = prometheus.NewDesc("flashmem_cluster_replication_lag_seconds", "Time the last cluster PERSIST spent replicating and committing.", nil, nil)
)

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descClLeader, descClTerm, descClCommit, descClApplied, descClMembers, descClSessions,
		descClUnder, descClBytes, descClPulled, descClHeals, descClCRC, descClRerep, descClRefused, descClSyncErr, descClMetaDelta, descClCommitLat, descClLag} {
		ch <- d
	}
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.d.cl.node
	st := n.Status()
	m := n.Metrics()
	g := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	cnt := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	g(descClLeader, float64(btoi(n.IsLeader())))
	g(descClTerm, float64(st.Term))
	g(descClCommit, float64(st.CommitIndex))
	g(descClApplied, float64(st.AppliedIndex))
	states := map[string]int{"alive": 0, "down": 0, "unknown": 0, "leader": 0}
	for _, ms := range st.Members {
		states[ms.State]++
	}
	for k, v := range states {
		g(descClMembers, float64(v), k)
	}
	g(descClSessions, float64(st.Sessions))
	g(descClUnder, float64(len(st.UnderReplicated)))
	cnt(descClBytes, m.BytesSent.Load(), "sent")
	cnt(descClBytes, m.BytesReceived(), "received")
	cnt(descClBytes, m.BytesServed(), "served")
	cnt(descClPulled, m.PagesPulled.Load())
	cnt(descClHeals, m.SelfHeals.Load())
	cnt(descClCRC, m.ChecksumFailures())
	cnt(descClRerep, m.Rereplications.Load())
	cnt(descClRefused, m.Refused.Load())
	cnt(descClSyncErr, c.d.cl.store.syncErrors.Load())
	cnt(descClMetaDelta, m.MetaDeltas.Load())
	lat := m.CommitLatencies()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	for _, q := range []float64{0.5, 0.99} {
		v := 0.0
		if len(lat) > 0 {
			v = lat[min(len(lat)-1, int(q*float64(len(lat))))].Seconds()
		}
		g(descClCommitLat, v, fmt.Sprint(q))
	}
	g(descClLag, time.Duration(m.ReplicationLagNS.Load()).Seconds())
}
