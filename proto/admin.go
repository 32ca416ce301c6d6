package proto

import (
	"encoding/json"
	"fmt"
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
	// Bytes is the memory freed.
	Bytes uint64 `json:"bytes"`
}

// AppendBinary implements Message.
func (m *EvictReply) AppendBinary(b []byte) ([]byte, error) { return appendJSON(b, m) }

// Decode implements Message.
func (m *EvictReply) Decode(body []byte) error {
	*m = EvictReply{}
	return decodeJSON("EVICT reply", body, m)
}
