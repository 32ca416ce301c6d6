package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"

	"github.com/hashicorp/raft"
)

// Member is one node of the cluster as the catalog knows it.
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	PeerAddr string `json:"peer_addr"`
	// CapacityBytes is the node's SSD budget for sessions (0: unknown).
	CapacityBytes int64 `json:"capacity_bytes,omitempty"`
	GPUs          int   `json:"gpus,omitempty"`
}

// PageEntry is one page of a session's manifest.
type PageEntry struct {
	Gen uint64 `json:"g"`
	CRC uint32 `json:"c"`
}

// Session is the catalog record of one persisted session.
type Session struct {
	Name     string `json:"name"`
	OwnerUID uint32 `json:"owner_uid"`
	OwnerGID uint32 `json:"owner_gid"`
	Model    string `json:"model,omitempty"`
	// Layout and Policy are the daemon's own JSON, opaque here.
	Layout json.RawMessage `json:"layout,omitempty"`
	Policy json.RawMessage `json:"policy,omitempty"`
	Chunks uint64          `json:"chunks"`
	// Pages is the manifest, indexed by page number.
	Pages []PageEntry `json:"pages"`
	// MetaCRC and MetaLen identify the metadata blob (layout, generations
	// and the indexer state) every replica holds.
	MetaCRC uint32 `json:"meta_crc"`
	MetaLen int    `json:"meta_len"`
	// Replicas are the nodes holding every page of the manifest, durably
	// (the owner included once it persisted).
	Replicas []string `json:"replicas"`
	// Assigned are the nodes the leader picked to hold copies; a node moves
	// to Replicas only with a commit after it acked every page.
	Assigned []string `json:"assigned,omitempty"`
	Owner    string   `json:"owner"`
	Epoch    uint64   `json:"epoch"`
	// Version counts committed manifests.
	Version uint64 `json:"version"`
}

func (s *Session) clone() *Session {
	c := *s
	c.Pages = slices.Clone(s.Pages)
	c.Replicas = slices.Clone(s.Replicas)
	c.Assigned = slices.Clone(s.Assigned)
	c.Layout = slices.Clone(s.Layout)
	c.Policy = slices.Clone(s.Policy)
	return &c
}

// Command ops. Each is small and its effect depends only on the state and
// the command, so every replica of the FSM computes the same result.
const (
	opMember       = "member"
	opRemoveMember = "remove_member"
	opClaim        = "claim"
	opAssign       = "assign"
	opCommit       = "commit"
	opDelete       = "delete"
	opDropReplica  = "drop_replica"
	opAddReplicas  = "add_replicas"
	opNoop         = "noop"
)

// Command is one catalog log entry.
type Command struct {
	Op     string  `json:"op"`
	Name   string  `json:"name,omitempty"`
	Node   string  `json:"node,omitempty"`
	Member *Member `json:"member,omitempty"`
	// Epoch is the epoch the caller holds (claim: expects; 0 = create).
	Epoch uint64 `json:"epoch,omitempty"`
	// RF is the replication factor for assign.
	RF int `json:"rf,omitempty"`
	// Session carries commit's new manifest and descriptive fields.
	Session *Session `json:"session,omitempty"`
	// Version and Add: add_replicas adds Add to the replica set if the
	// manifest is still at Version (nothing committed since the copy).
	Version uint64   `json:"version,omitempty"`
	Add     []string `json:"add,omitempty"`
	// Exclude: members assign must not pick (the caller found them down).
	Exclude []string `json:"exclude,omitempty"`
	// ID names one call of Node.Apply across its retries: a command whose
	// first attempt was committed but whose answer was lost (the leader
	// died or lost leadership mid-call) is retried, and its second copy in
	// the log must answer what the first did instead of applying again (a
	// claim would fail as stale, a delete as not found, after succeeding).
	ID string `json:"id,omitempty"`
}

// Result is what applying a command returns.
type Result struct {
	Session *Session `json:"session,omitempty"`
	Err     string   `json:"err,omitempty"`
	// Kind is the sentinel the error wraps ("stale", "not_found").
	Kind string `json:"kind,omitempty"`
}

func errResult(kind, format string, a ...any) *Result {
	return &Result{Err: fmt.Sprintf(format, a...), Kind: kind}
}

// Error turns a failed result back into a sentinel-wrapped error.
func (r *Result) Error() error {
	if r == nil || r.Err == "" {
		return nil
	}
	switch r.Kind {
	case "stale":
		return fmt.Errorf("%w: %s", ErrStaleEpoch, r.Err)
	case "not_found":
		return fmt.Errorf("%w: %s", ErrNotFound, r.Err)
	case "member":
		return fmt.Errorf("%w: %s", ErrUnknownMember, r.Err)
	}
	return fmt.Errorf("%w: %s", ErrBadCommand, r.Err)
}

// catalogState is everything the FSM holds; it is also the snapshot format.
type catalogState struct {
	Members  map[string]*Member  `json:"members"`
	Sessions map[string]*Session `json:"sessions"`
	// Deleted lists the most recent deletions (at most maxTombs, oldest
	// first; a name claimed again leaves it): a member that catches up by
	// snapshot never applies the delete commands themselves, and uses
	// these to drop its local copies of names deleted while it was away.
	Deleted []Tomb `json:"deleted,omitempty"`
	// Index is the log index the state is as of (snapshots).
	Index uint64 `json:"index,omitempty"`
	// Applied are the results of the last maxApplied commands that carried
	// an ID, oldest first (bounded by count, so every replica of the FSM
	// keeps the same ones): a retried command's copy is answered from here.
	Applied []appliedCmd `json:"applied,omitempty"`
}

// appliedCmd is a command's first result; Session is kept without its page
// manifest (a retry that succeeded gets the current record when the
// session is still at the same epoch).
type appliedCmd struct {
	ID     string `json:"id"`
	Result Result `json:"result"`
}

// maxApplied bounds catalogState.Applied: far more than the commands in
// flight at once (a retry follows its first attempt within seconds).
const maxApplied = 2048

// Tomb is a deleted session name and the log index of its deletion.
type Tomb struct {
	Name  string `json:"name"`
	Index uint64 `json:"index"`
}

// maxTombs bounds catalogState.Deleted (deterministically, by count).
const maxTombs = 10000

func (st *catalogState) untomb(name string) {
	st.Deleted = slices.DeleteFunc(st.Deleted, func(t Tomb) bool { return t.Name == name })
}

// Catalog is the Raft FSM. Reads take a consistent copy under its lock.
type Catalog struct {
	mu    sync.RWMutex
	st    catalogState
	index uint64 // last applied log index
	// onApply, if set, is called after each command with its result
	// (outside the lock): nodes use it to drop local copies of deleted
	// sessions and to notice ownership moves.
	onApply func(c *Command, r *Result)
	// onRestore, if set, is called after a snapshot replaced the state
	// while this member was running (a catch-up, not its own start) with
	// the names deleted after what it had applied.
	onRestore func(deleted []string)
	// applied indexes st.Applied by command ID (built on first use, after a
	// restore); an entry's position is its value minus appliedBase.
	applied     map[string]int
	appliedBase int
}

// NewCatalog returns an empty catalog.
func NewCatalog() *Catalog {
	return &Catalog{st: catalogState{Members: map[string]*Member{}, Sessions: map[string]*Session{}}}
}

// Apply implements raft.FSM.
func (c *Catalog) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	var cmd Command
	if err := json.Unmarshal(l.Data, &cmd); err != nil {
		return errResult("bad", "decoding command at index %d: %v", l.Index, err)
	}
	c.mu.Lock()
	c.index = l.Index
	r := c.applyOnce(&cmd)
	c.mu.Unlock()
	if c.onApply != nil {
		c.onApply(&cmd, r)
	}
	return r
}

// ApplyCommand applies cmd directly (tests and the linearizability model).
func (c *Catalog) ApplyCommand(cmd *Command) *Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applyOnce(cmd)
}

// applyOnce applies cmd unless a command with its ID was applied already,
// and then answers what that one did.
func (c *Catalog) applyOnce(cmd *Command) *Result {
	if cmd.ID == "" {
		return c.apply(cmd)
	}
	if c.applied == nil {
		c.applied = make(map[string]int, len(c.st.Applied))
		for i, a := range c.st.Applied {
			c.applied[a.ID] = i + c.appliedBase
		}
	}
	if i, ok := c.applied[cmd.ID]; ok {
		a := c.st.Applied[i-c.appliedBase].Result
		r := a
		if a.Session != nil {
			r.Session = a.Session.clone()
			if cur := c.st.Sessions[a.Session.Name]; cur != nil && cur.Epoch == a.Session.Epoch {
				r.Session = cur.clone()
			}
		}
		return &r
	}
	r := c.apply(cmd)
	kept := *r
	if r.Session != nil {
		kept.Session = r.Session.clone()
		kept.Session.Pages = nil
	}
	c.st.Applied = append(c.st.Applied, appliedCmd{ID: cmd.ID, Result: kept})
	c.applied[cmd.ID] = c.appliedBase + len(c.st.Applied) - 1
	if len(c.st.Applied) > maxApplied {
		drop := len(c.st.Applied) - maxApplied
		for _, a := range c.st.Applied[:drop] {
			delete(c.applied, a.ID)
		}
		c.st.Applied = slices.Delete(c.st.Applied, 0, drop)
		c.appliedBase += drop
	}
	return r
}

func (c *Catalog) apply(cmd *Command) *Result {
	st := &c.st
	switch cmd.Op {
	case opNoop:
		return &Result{}
	case opMember:
		if cmd.Member == nil || cmd.Member.ID == "" {
			return errResult("bad", "member without id")
		}
		m := *cmd.Member
		st.Members[m.ID] = &m
		return &Result{}
	case opRemoveMember:
		delete(st.Members, cmd.Node)
		return &Result{}
	case opClaim:
		s := st.Sessions[cmd.Name]
		if s == nil {
			if cmd.Epoch != 0 {
				return errResult("not_found", "session %q is not in the catalog", cmd.Name)
			}
			s = &Session{Name: cmd.Name, Owner: cmd.Node, Epoch: 1}
			if cmd.Session != nil {
				s.OwnerUID, s.OwnerGID = cmd.Session.OwnerUID, cmd.Session.OwnerGID
			}
			st.Sessions[cmd.Name] = s
			st.untomb(cmd.Name)
			return &Result{Session: s.clone()}
		}
		if cmd.Epoch != s.Epoch {
			return errResult("stale", "session %q is at epoch %d on %s, caller expected %d", cmd.Name, s.Epoch, s.Owner, cmd.Epoch)
		}
		s.Owner = cmd.Node
		s.Epoch++
		return &Result{Session: s.clone()}
	case opAssign:
		s, r := c.owned(cmd)
		if r != nil {
			return r
		}
		s.Assigned = c.pick(s, cmd.RF, cmd.Exclude)
		return &Result{Session: s.clone()}
	case opCommit:
		s, r := c.owned(cmd)
		if r != nil {
			return r
		}
		n := cmd.Session
		if n == nil {
			return errResult("bad", "commit without a manifest")
		}
		s.OwnerUID, s.OwnerGID, s.Model = n.OwnerUID, n.OwnerGID, n.Model
		s.Layout, s.Policy, s.Chunks = slices.Clone(n.Layout), slices.Clone(n.Policy), n.Chunks
		s.Pages = slices.Clone(n.Pages)
		s.MetaCRC, s.MetaLen = n.MetaCRC, n.MetaLen
		s.Replicas = slices.Clone(n.Replicas)
		s.Version++
		return &Result{Session: s.clone()}
	case opDelete:
		if _, r := c.owned(cmd); r != nil {
			return r
		}
		delete(st.Sessions, cmd.Name)
		st.untomb(cmd.Name)
		st.Deleted = append(st.Deleted, Tomb{Name: cmd.Name, Index: c.index})
		if len(st.Deleted) > maxTombs {
			st.Deleted = slices.Delete(st.Deleted, 0, len(st.Deleted)-maxTombs)
		}
		return &Result{}
	case opAddReplicas:
		s := st.Sessions[cmd.Name]
		if s == nil {
			return errResult("not_found", "session %q is not in the catalog", cmd.Name)
		}
		if s.Epoch != cmd.Epoch || s.Version != cmd.Version {
			return errResult("stale", "session %q changed (epoch %d version %d) while it was copied at epoch %d version %d", cmd.Name, s.Epoch, s.Version, cmd.Epoch, cmd.Version)
		}
		for _, id := range cmd.Add {
			if !slices.Contains(s.Replicas, id) {
				s.Replicas = append(s.Replicas, id)
			}
		}
		return &Result{Session: s.clone()}
	case opDropReplica:
		// A node lost or removed: it no longer counts as a copy.
		for _, s := range st.Sessions {
			s.Replicas = slices.DeleteFunc(s.Replicas, func(id string) bool { return id == cmd.Node })
			s.Assigned = slices.DeleteFunc(s.Assigned, func(id string) bool { return id == cmd.Node })
		}
		return &Result{}
	}
	return errResult("bad", "unknown op %q", cmd.Op)
}

// owned checks that cmd's node owns the session at cmd's epoch.
func (c *Catalog) owned(cmd *Command) (*Session, *Result) {
	s := c.st.Sessions[cmd.Name]
	if s == nil {
		return nil, errResult("not_found", "session %q is not in the catalog", cmd.Name)
	}
	if s.Owner != cmd.Node || s.Epoch != cmd.Epoch {
		return nil, errResult("stale", "session %q is owned by %s at epoch %d; %s holds epoch %d", cmd.Name, s.Owner, s.Epoch, cmd.Node, cmd.Epoch)
	}
	return s, nil
}

// pick chooses rf-1 members besides the owner to hold copies: replicas
// already holding the session first (least data to move), then the members
// holding the fewest sessions, ties by id — deterministic, so every FSM
// replica agrees.
func (c *Catalog) pick(s *Session, rf int, exclude []string) []string {
	out := []string{}
	want := rf - 1
	seen := map[string]bool{s.Owner: true}
	for _, id := range exclude {
		seen[id] = true
	}
	for _, id := range s.Replicas {
		if len(out) < want && !seen[id] && c.st.Members[id] != nil {
			out = append(out, id)
			seen[id] = true
		}
	}
	if len(out) >= want {
		return out
	}
	load := map[string]int{}
	for _, o := range c.st.Sessions {
		for _, id := range o.Replicas {
			load[id]++
		}
	}
	var cand []string
	for id := range c.st.Members {
		if !seen[id] {
			cand = append(cand, id)
		}
	}
	sort.Slice(cand, func(i, j int) bool {
		if load[cand[i]] != load[cand[j]] {
			return load[cand[i]] < load[cand[j]]
		}
		return cand[i] < cand[j]
	})
	for _, id := range cand {
		if len(out) >= want {
			break
		}
		out = append(out, id)
	}
	return out
}

// Session returns a copy of the named session's record.
func (c *Catalog) Session(name string) (*Session, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	s := c.st.Sessions[name]
	if s == nil {
		return nil, false
	}
	return s.clone(), true
}

// OwnerOf returns a session's owner and epoch without copying its manifest
// (checked on every APPEND).
func (c *Catalog) OwnerOf(name string) (owner string, epoch uint64, ok bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	s := c.st.Sessions[name]
	if s == nil {
		return "", 0, false
	}
	return s.Owner, s.Epoch, true
}

// Sessions returns copies of every session record, by name.
func (c *Catalog) Sessions() []*Session {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]*Session, 0, len(c.st.Sessions))
	for _, s := range c.st.Sessions {
		out = append(out, s.clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Members returns copies of the member records, by id.
func (c *Catalog) Members() []Member {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Member, 0, len(c.st.Members))
	for _, m := range c.st.Members {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Member returns one member's record.
func (c *Catalog) Member(id string) (Member, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	m := c.st.Members[id]
	if m == nil {
		return Member{}, false
	}
	return *m, true
}

// AppliedIndex is the last log index applied.
func (c *Catalog) AppliedIndex() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.index
}

// Snapshot implements raft.FSM: a deep copy now, encoded later.
func (c *Catalog) Snapshot() (raft.FSMSnapshot, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	cp := catalogState{Members: map[string]*Member{}, Sessions: map[string]*Session{}}
	for k, m := range c.st.Members {
		mm := *m
		cp.Members[k] = &mm
	}
	for k, s := range c.st.Sessions {
		cp.Sessions[k] = s.clone()
	}
	cp.Deleted = slices.Clone(c.st.Deleted)
	cp.Applied = slices.Clone(c.st.Applied)
	cp.Index = c.index
	return &catalogSnapshot{st: cp}, nil
}

// Restore implements raft.FSM.
func (c *Catalog) Restore(r io.ReadCloser) error {
	defer r.Close()
	var st catalogState
	if err := json.NewDecoder(r).Decode(&st); err != nil {
		return fmt.Errorf("%w: snapshot: %v", ErrBadCommand, err)
	}
	if st.Members == nil {
		st.Members = map[string]*Member{}
	}
	if st.Sessions == nil {
		st.Sessions = map[string]*Session{}
	}
	c.mu.Lock()
	// prev 0: this member's own start (its latest snapshot, whose deletions
	// it applied before taking it); else a catch-up from the leader.
	prev := c.index
	c.st = st
	c.applied, c.appliedBase = nil, 0
	if st.Index > c.index {
		c.index = st.Index
	}
	var gone []string
	if prev > 0 {
		for _, t := range st.Deleted {
			if t.Index > prev {
				if _, back := st.Sessions[t.Name]; !back {
					gone = append(gone, t.Name)
				}
			}
		}
	}
	c.mu.Unlock()
	if len(gone) > 0 && c.onRestore != nil {
		c.onRestore(gone)
	}
	return nil
}

type catalogSnapshot struct{ st catalogState }

func (s *catalogSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(&s.st); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *catalogSnapshot) Release() {}
