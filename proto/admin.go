package proto

import (
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"
)

// Admin bodies are JSON (UTF-8, one object): they are off the hot path and
// meant to evolve. Decoders ignore unknown fields, so a daemon may add
// fields without breaking older clients; the frame size limit bounds them.

func appendJSON(b []byte, v any) ([]byte, error) {
	p, err := json.Marshal(v)
	if err != nil {
		return b, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return append(b, p...), nil
}

func decodeJSON(what string, body []byte, v any) error {
	// encoding/json replaces invalid UTF-8 in strings with U+FFFD: a name
	// with a stray byte would silently become another name.
	if !utf8.Valid(body) {
		i := 0
		for i < len(body) {
			r, n := utf8.DecodeRune(body[i:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			i += n
		}
		return fmt.Errorf("%w: %s: invalid UTF-8 at byte %d (send the JSON as UTF-8)", ErrMalformed, what, i)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	return nil
}

// AdminTarget names the session of INSPECT and EVICT: by id, or by name
// when Session is 0. Exactly one must be given.
type AdminTarget struct {
	Session uint64 `json:"session,omitempty"`
	Name    string `json:"name,omitempty"`
}

// AppendBinary implements Message.
func (m *AdminTarget) AppendBinary(b []byte) ([]byte, error) { return appendJSON(b, m) }

// Decode implements Message.
func (m *AdminTarget) Decode(body []byte) error {
	*m = AdminTarget{}
	if err := decodeJSON("admin target", body, m); err != nil {
		return err
	}
	if (m.Session == 0) == (m.Name == "") {
		return fmt.Errorf("%w: admin target needs exactly one of session and name", ErrMalformed)
	}
	if len(m.Name) > MaxNameLen {
		return fmt.Errorf("%w: admin target name is %d bytes, at most %d", ErrMalformed, len(m.Name), MaxNameLen)
	}
	return nil
}

// TierStatus describes one storage tier in STATUS.
type TierStatus struct {
	Name          string `json:"name"`
	UsedBytes     uint64 `json:"used_bytes"`
	CapacityBytes uint64 `json:"capacity_bytes"`
	Pages         uint64 `json:"pages"`
	Hits          uint64 `json:"hits"`
	Misses        uint64 `json:"misses"`
	ReadBytes     uint64 `json:"read_bytes"`
	WrittenBytes  uint64 `json:"written_bytes"`
}

// StatusReply answers STATUS.
type StatusReply struct {
	Instance      string       `json:"instance"`
	Server        string       `json:"server"`
	Protocol      uint16       `json:"protocol"`
	UptimeSeconds float64      `json:"uptime_seconds"`
	Connections   int          `json:"connections"`
	Sessions      int          `json:"sessions"`
	Leases        int          `json:"leases"`
	Tiers         []TierStatus `json:"tiers,omitempty"`
	// Counters holds further named numbers (cycle latency quantiles,
	// prefetch quality, ...) that the daemon chooses to report.
	Counters map[string]float64 `json:"counters,omitempty"`
	// GPUs are the CUDA devices that hold session reserves (absent on hosts
	// and builds without CUDA).
	GPUs []GPUStatus `json:"gpus,omitempty"`
	// PinnedMirror says the host mirror is page-locked for DMA recall.
	PinnedMirror bool `json:"pinned_mirror,omitempty"`
	// Scoring lists the models that score on a GPU.
	Scoring []GPUScoring `json:"gpu_scoring,omitempty"`
}

// GPUStatus is one CUDA device of STATUS.
type GPUStatus struct {
	Device             uint32 `json:"device"`
	Name               string `json:"name"`
	ReserveBudgetBytes uint64 `json:"reserve_budget_bytes"`
	ReserveUsedBytes   uint64 `json:"reserve_used_bytes"`
	// Exportable: reserves reach decoders as VMM file descriptors (false: the
	// device offers legacy IPC only and takes no sessions).
	Exportable bool `json:"exportable"`
}

// GPUScoring is one model that scores on a GPU.
type GPUScoring struct {
	Model        string `json:"model"`
	Device       uint32 `json:"device"`
	GPUBatches   uint64 `json:"gpu_batches"`
	CPUFallbacks uint64 `json:"cpu_fallbacks"`
	LastError    string `json:"last_error,omitempty"`
}

// AppendBinary implements Message.
func (m *StatusReply) AppendBinary(b []byte) ([]byte, error) { return appendJSON(b, m) }

// Decode implements Message.
func (m *StatusReply) Decode(body []byte) error {
	*m = StatusReply{}
	return decodeJSON("STATUS reply", body, m)
}

// SessionInfo describes one session in SESSIONS and INSPECT.
type SessionInfo struct {
	ID            uint64 `json:"id"`
	Name          string `json:"name,omitempty"`
	Model         string `json:"model"`
	Persist       bool   `json:"persist"`
	OwnerUID      uint32 `json:"owner_uid"`
	Attached      bool   `json:"attached"`
	Client        string `json:"client,omitempty"`
	Chunks        uint64 `json:"chunks"`
	Pages         uint64 `json:"pages"`
	ResidentPages uint64 `json:"resident_pages"`
	Cycles        uint64 `json:"cycles"`
	Fallback      bool   `json:"fallback"`
	Bytes         uint64 `json:"bytes"`
	// State is "attached" (a connection holds it), "detached" (in memory,
	// resumable by name) or "on-ssd" (persisted, not in memory).
	State string `json:"state,omitempty"`
	// LastUsed is when the session was last attached or, for one on SSD
	// only, last saved.
	LastUsed time.Time `json:"last_used,omitzero"`
	// TierPages counts the session's pages per tier: "reserve" (resident
	// in its region), "host" (in the host mirror), "ssd" (only on SSD).
	TierPages map[string]uint64 `json:"tier_pages,omitempty"`
}

// SessionsReply answers SESSIONS.
type SessionsReply struct {
	Sessions []SessionInfo `json:"sessions"`
}

// AppendBinary implements Message.
func (m *SessionsReply) AppendBinary(b []byte) ([]byte, error) { return appendJSON(b, m) }

// Decode implements Message.
func (m *SessionsReply) Decode(body []byte) error {
	*m = SessionsReply{}
	return decodeJSON("SESSIONS reply", body, m)
}

// InspectReply answers INSPECT.
type InspectReply struct {
	Session       SessionInfo `json:"session"`
	Layout        Layout      `json:"layout"`
	Policy        Policy      `json:"policy"`
	Leases        int         `json:"leases"`
	AboveFraction float64     `json:"above_fraction"`
	// TierPages counts the session's pages per tier name.
	TierPages map[string]uint64 `json:"tier_pages,omitempty"`
	// Resident lists the pages of the current resident set.
	Resident []uint32 `json:"resident,omitempty"`
}

// AppendBinary implements Message.
func (m *InspectReply) AppendBinary(b []byte) ([]byte, error) { return appendJSON(b, m) }

// Decode implements Message.
func (m *InspectReply) Decode(body []byte) error {
	*m = InspectReply{}
	return decodeJSON("INSPECT reply", body, m)
}

// EvictReply answers EVICT.
type EvictReply struct {
	// Sessions are the ids of the evicted sessions.
	Sessions []uint64 `json:"sessions"`
	// Bytes is the memory freed (EVICT, DELETE) or written to SSD (SAVE).
	Bytes uint64 `json:"bytes"`
	// Demoted: the session is attached to a connection, so it stays open and
	// its leases valid; only its pages left host memory for SSD.
	Demoted bool `json:"demoted,omitempty"`
	// OnSSDOnly says the session was already out of memory (EVICT of a
	// persisted session on SSD only: nothing to do).
	OnSSDOnly bool `json:"on_ssd_only,omitempty"`
}

// VerifyReply answers VERIFY: every page of the session read back, from SSD
// with its checksum where it is there, else from the host mirror.
type VerifyReply struct {
	Session uint64 `json:"session"`
	Name    string `json:"name,omitempty"`
	// Pages is the number of pages the session has.
	Pages uint64 `json:"pages"`
	// Verified pages read back whole: from SSD with a good checksum and the
	// expected generation, or held in the host mirror (InMemory of them)
	// with a newer generation than SSD's.
	Verified uint64 `json:"verified"`
	InMemory uint64 `json:"in_memory"`
	// Bad pages failed their checksum or are missing from every tier.
	Bad uint64 `json:"bad"`
	// Damage lists the bad pages (at most 64) with the reason for each.
	Damage []PageDamage `json:"damage,omitempty"`
	Bytes  uint64       `json:"bytes"`
	// Cluster is set when the session is in a cluster's catalog: VERIFY
	// first resumes it on this node, pulling what it lacks from replicas.
	Cluster *ClusterVerify `json:"cluster,omitempty"`
}

// ClusterVerify is the cluster part of VERIFY: every page checked against
// the committed manifest (generation and CRC32C).
type ClusterVerify struct {
	Owner    string `json:"owner"`
	Epoch    uint64 `json:"epoch"`
	Manifest int    `json:"manifest_pages"`
	Verified int    `json:"verified"`
	Pulled   int    `json:"pulled"`
	Healed   int    `json:"healed"`
	Bad      int    `json:"bad"`
	Moved    bool   `json:"moved"`
}

// PageDamage is one bad page of VERIFY.
type PageDamage struct {
	Page   uint32 `json:"page"`
	Reason string `json:"reason"`
}

// AppendBinary implements Message.
func (m *VerifyReply) AppendBinary(b []byte) ([]byte, error) { return appendJSON(b, m) }

// Decode implements Message.
func (m *VerifyReply) Decode(body []byte) error {
	*m = VerifyReply{}
	return decodeJSON("VERIFY reply", body, m)
}

// AppendBinary implements Message.
func (m *EvictReply) AppendBinary(b []byte) ([]byte, error) { return appendJSON(b, m) }

// Decode implements Message.
func (m *EvictReply) Decode(body []byte) error {
	*m = EvictReply{}
	return decodeJSON("EVICT reply", body, m)
}

// ModelInfo describes one indexer model in MODELS: what OPEN's layout and
// every CYCLE entry must carry for a session of this model.
type ModelInfo struct {
	Name string `json:"name"`
	// Kind is "lsa" (query: the hidden state as little-endian bf16; key:
	// head_dim fp8 e4m3 bytes then an f32 scale), "text" (text-mode keys
	// and queries) or "trace" (trace replay).
	Kind string `json:"kind"`
	// QueryBytes is the size of one query per target layer; 0 means the
	// model takes queries of any length.
	QueryBytes int `json:"query_bytes"`
	// KeyBytes is OPEN's layout key_bytes: one chunk's index key per target
	// layer.
	KeyBytes int `json:"key_bytes"`
	// TargetLayers is OPEN's layout target_layers, the queries per CYCLE
	// entry; Layers numbers them as the model does.
	TargetLayers int   `json:"target_layers"`
	Layers       []int `json:"layers"`
	// Default marks the model an OPEN with an empty model name gets.
	Default bool `json:"default"`
}

// ServerLimits are the limits a daemon enforces, named by their
// configuration keys ([limits] unless noted).
type ServerLimits struct {
	MaxFrameBytes       uint32  `json:"max_frame_bytes"`
	StagingBytes        int64   `json:"staging_bytes"`
	MaxCycleEntries     uint32  `json:"max_cycle_entries"`
	MaxConns            int     `json:"max_conns"`
	MaxConnsPerUID      int     `json:"max_conns_per_uid"`
	AdminReservedConns  int     `json:"admin_reserved_conns"`
	MaxSessions         int     `json:"max_sessions"`
	MaxSessionsPerUID   int     `json:"max_sessions_per_uid"`
	MaxSessionsPerConn  int     `json:"max_sessions_per_conn"`
	MaxSessionBytes     int64   `json:"max_session_bytes"`
	MaxReserveBytes     int64   `json:"max_reserve_bytes"`
	MaxHostReserveBytes int64   `json:"max_host_reserve_bytes"`
	MaxLayers           int     `json:"max_layers"`
	MaxRowBytes         uint32  `json:"max_row_bytes"`
	MaxReserveSlots     int     `json:"max_reserve_slots"`
	MaxChunks           int     `json:"max_chunks_per_session"`
	LeaseTimeout        float64 `json:"lease_timeout_seconds"`
	DetachedTTL         float64 `json:"detached_ttl_seconds"`
	HandshakeTimeout    float64 `json:"handshake_timeout_seconds"`
	IdleTimeout         float64 `json:"idle_timeout_seconds"`
	FrameTimeout        float64 `json:"frame_timeout_seconds"`
}

// ModelsReply answers MODELS.
type ModelsReply struct {
	// DefaultModel is the model of an OPEN whose model name is empty.
	DefaultModel string       `json:"default_model"`
	Models       []ModelInfo  `json:"models"`
	Limits       ServerLimits `json:"limits"`
}

// AppendBinary implements Message.
func (m *ModelsReply) AppendBinary(b []byte) ([]byte, error) { return appendJSON(b, m) }

// Decode implements Message.
func (m *ModelsReply) Decode(body []byte) error {
	*m = ModelsReply{}
	return decodeJSON("MODELS reply", body, m)
}
