package proto

import (
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strings"
)

// ErrorBody is the body of an error frame: code u32, message str16. It is
// an *Error in Go; the conversion is free.
type ErrorBody Error

// AppendBinary implements Message.
func (m *ErrorBody) AppendBinary(b []byte) ([]byte, error) {
	e := enc{b}
	e.errorStatus((*Error)(m))
	return e.b, nil
}

// Decode implements Message.
func (m *ErrorBody) Decode(body []byte) error {
	d := newDec("error", body)
	m.Code = Code(d.u32())
	m.Msg = d.str("message", MaxErrorMsg)
	if d.err == nil && m.Code == CodeOK {
		d.fail("error frame with code 0")
	}
	return d.end()
}

// Empty is the empty body of STATUS and SESSIONS requests and of the
// RELEASE, CLOSE and PERSIST replies.
type Empty struct{}

// AppendBinary implements Message.
func (*Empty) AppendBinary(b []byte) ([]byte, error) { return b, nil }

// Decode implements Message.
func (*Empty) Decode(body []byte) error {
	if len(body) != 0 {
		return fmt.Errorf("%w: empty body has %d bytes", ErrMalformed, len(body))
	}
	return nil
}

// Ping is the body of PING and of its reply, which echoes it byte for byte.
type Ping struct{ Data []byte }

// AppendBinary implements Message.
func (m *Ping) AppendBinary(b []byte) ([]byte, error) { return append(b, m.Data...), nil }

// Decode implements Message.
func (m *Ping) Decode(body []byte) error { m.Data = body; return nil }

// Hello opens the conversation. It is always sent with header version
// HelloVersion; its layout never changes.
type Hello struct {
	MinVersion uint16
	MaxVersion uint16
	// ClientName identifies the client in logs and SESSIONS (≤ 255 bytes).
	ClientName string
}

// AppendBinary implements Message.
func (m *Hello) AppendBinary(b []byte) ([]byte, error) {
	e := enc{b}
	e.u16(m.MinVersion)
	e.u16(m.MaxVersion)
	if err := e.str("client name", m.ClientName, MaxNameLen); err != nil {
		return b, err
	}
	return e.b, nil
}

// Decode implements Message.
func (m *Hello) Decode(body []byte) error {
	d := newDec("HELLO", body)
	m.MinVersion = d.u16()
	m.MaxVersion = d.u16()
	m.ClientName = d.str("client name", MaxNameLen)
	if d.err == nil && m.MinVersion > m.MaxVersion {
		d.fail("min version %d > max version %d", m.MinVersion, m.MaxVersion)
	}
	return d.end()
}

// Negotiate picks the highest version both sides speak: the server's range
// is [MinVersion, MaxVersion] of this build. It returns an *Error with
// CodeUnsupportedVersion when the ranges do not overlap.
func (m *Hello) Negotiate() (uint16, error) {
	v := min(m.MaxVersion, MaxVersion)
	if v < m.MinVersion || v < MinVersion {
		return 0, CodeUnsupportedVersion.Errorf("client speaks %d..%d, server %d..%d",
			m.MinVersion, m.MaxVersion, MinVersion, MaxVersion)
	}
	return v, nil
}

// Limits are the server's limits, announced in the HELLO reply.
type Limits struct {
	// MaxBody is the largest request body the server accepts.
	MaxBody uint32
	// MaxSessions is the most sessions one connection may hold open.
	MaxSessions uint32
	// MaxCycleEntries is the most entries one CYCLE frame may carry.
	MaxCycleEntries uint32
	// StagingSize is the size of the connection's staging region.
	StagingSize uint64
}

// HelloReply answers HELLO. The frame carries the connection's staging
// region (a memfd of Limits.StagingSize bytes) as its only fd when
// StagingSize > 0; Client puts it in Staging.
type HelloReply struct {
	Version    uint16
	Limits     Limits
	InstanceID [16]byte
	// Server names the daemon build (≤ 255 bytes).
	Server string

	// Staging is filled in by the receiver from the frame's fd; it is not
	// part of the body.
	Staging *os.File
}

// AppendBinary implements Message.
func (m *HelloReply) AppendBinary(b []byte) ([]byte, error) {
	e := enc{b}
	e.u16(m.Version)
	e.u16(0)
	e.u32(m.Limits.MaxBody)
	e.u32(m.Limits.MaxSessions)
	e.u32(m.Limits.MaxCycleEntries)
	e.u64(m.Limits.StagingSize)
	e.b = append(e.b, m.InstanceID[:]...)
	if err := e.str("server", m.Server, MaxNameLen); err != nil {
		return b, err
	}
	return e.b, nil
}

// Decode implements Message.
func (m *HelloReply) Decode(body []byte) error {
	d := newDec("HELLO reply", body)
	m.Version = d.u16()
	if v := d.u16(); v != 0 && d.err == nil {
		d.fail("reserved field is %d", v)
	}
	m.Limits.MaxBody = d.u32()
	m.Limits.MaxSessions = d.u32()
	m.Limits.MaxCycleEntries = d.u32()
	m.Limits.StagingSize = d.u64()
	copy(m.InstanceID[:], d.take(16))
	m.Server = d.str("server", MaxNameLen)
	return d.end()
}

// Values of Open.Device besides a GPU ordinal.
const (
	// DeviceAny lets the daemon choose: the GPU with the most reserve budget
	// left, or host memory on a host without CUDA devices.
	DeviceAny uint32 = 0xFFFFFFFF
	// DeviceHostOnly asks for a host-memory (memfd) reserve even on a GPU
	// host, for clients that read the reserve with the CPU (tools, tests).
	DeviceHostOnly uint32 = 0xFFFFFFFE
)

// NoDevice is RegionDesc.Device of a region in host memory.
const NoDevice uint32 = 0xFFFFFFFF

// Open creates a session.
type Open struct {
	// Name is the session's name for RESUME; empty means ephemeral.
	Name string
	// Model names the indexer model (daemon configuration).
	Model string
	// Persist asks for the session to survive CLOSE and restarts.
	Persist bool
	// Device is the GPU ordinal of the reserve, DeviceAny or DeviceHostOnly.
	// The reply's RegionDesc says what the daemon gave (Kind, Device).
	Device uint32
	Layout Layout
	Policy Policy
}

// Validate checks the layout (CodeBadLayout) and policy (CodeBadRequest);
// a server calls it after Decode.
func (m *Open) Validate() error {
	if m.Persist && m.Name == "" {
		return CodeBadRequest.Errorf("a persisted session needs a name")
	}
	if err := m.Layout.Validate(); err != nil {
		return err
	}
	return m.Policy.Validate()
}

// AppendBinary implements Message.
func (m *Open) AppendBinary(b []byte) ([]byte, error) {
	e := enc{b}
	if err := e.str("session name", m.Name, MaxNameLen); err != nil {
		return b, err
	}
	if err := e.str("model name", m.Model, MaxNameLen); err != nil {
		return b, err
	}
	e.bool32(m.Persist)
	e.u32(m.Device)
	m.Policy.encode(&e)
	if err := m.Layout.encode(&e); err != nil {
		return b, err
	}
	// Optional trailing flags, written only when set, so an OPEN without them
	// is byte-for-byte what daemons before the flags expect.
	if m.Layout.PageMajor {
		e.u32(OpenFlagPageMajor)
	}
	return e.b, nil
}

// OPEN's optional trailing flags word.
const (
	// OpenFlagPageMajor: Layout.PageMajor, a page-major reserve region.
	OpenFlagPageMajor uint32 = 1 << 0
	openFlagsKnown           = OpenFlagPageMajor
)

// Decode implements Message.
func (m *Open) Decode(body []byte) error {
	d := newDec("OPEN", body)
	m.Name = d.str("session name", MaxNameLen)
	m.Model = d.str("model name", MaxNameLen)
	m.Persist = d.bool32("persist")
	m.Device = d.u32()
	m.Policy.decode(d)
	m.Layout.decode(d)
	if d.err == nil && d.rem() > 0 {
		flags := d.u32()
		switch {
		case d.err != nil:
		case flags&^openFlagsKnown != 0:
			d.fail("unknown OPEN flags %#x", flags&^openFlagsKnown)
		case flags == 0:
			d.fail("OPEN flags word present but 0 (omit it)") // one encoding per message
		}
		m.Layout.PageMajor = flags&OpenFlagPageMajor != 0
	}
	return d.end()
}

// RegionLayer locates one layer's buffer inside a reserve region: slot k of
// the layer is the RowBytes bytes at Offset + k·RegionDesc.Stride(layer).
type RegionLayer struct {
	Offset   uint64
	RowBytes uint32
}

// RegionDesc describes a session's reserve region: one buffer per layer of
// Slots rows each, a resident page occupying the same slot in every layer.
// Kind says what the region's fd is; Device is the GPU ordinal (as the
// daemon's CUDA driver counts devices) of a RegionCUDA region and NoDevice
// for a RegionMemfd one — any other pairing is malformed.
type RegionDesc struct {
	Size   uint64
	Slots  uint32
	Kind   RegionKind
	Device uint32
	Layers []RegionLayer
	// Strides, when not nil, holds every layer's slot stride: a page-major
	// region (Layout.PageMajor), where each is the page's slot size. Nil: the
	// per-layer arrangement, stride = RowBytes. On the wire an optional
	// trailing list after the descriptor's reply, present only when needed.
	Strides []uint64
}

// Stride is layer ly's slot stride: slot k of the layer starts at
// Layers[ly].Offset + k·Stride(ly).
func (r *RegionDesc) Stride(ly int) uint64 {
	if r.Strides != nil {
		return r.Strides[ly]
	}
	return uint64(r.Layers[ly].RowBytes)
}

// kindProblem is the Kind/Device rule shared by encode and decode, so that a
// descriptor the decoder accepts always re-encodes; "" means consistent.
func (r *RegionDesc) kindProblem() string {
	switch {
	case r.Kind != RegionMemfd && r.Kind != RegionCUDA:
		return fmt.Sprintf("region kind %d", uint32(r.Kind))
	case r.Kind == RegionMemfd && r.Device != NoDevice:
		return fmt.Sprintf("host-memory region names device %d (want %#x)", r.Device, NoDevice)
	case r.Kind == RegionCUDA && r.Device == NoDevice:
		return "CUDA region without a device"
	}
	return ""
}

// Row returns the bytes of slot in layer ly of the mapped region mem, or
// nil if the descriptor places it outside mem.
func (r *RegionDesc) Row(mem []byte, ly int, slot uint32) []byte {
	if ly < 0 || ly >= len(r.Layers) || slot >= r.Slots {
		return nil
	}
	l := r.Layers[ly]
	start := l.Offset + uint64(slot)*r.Stride(ly)
	end := start + uint64(l.RowBytes)
	if end > uint64(len(mem)) || start > end {
		return nil
	}
	return mem[start:end:end]
}

func (r *RegionDesc) encode(e *enc) error {
	if len(r.Layers) > MaxLayers {
		return fmt.Errorf("%w: region has %d layers, at most %d", ErrMalformed, len(r.Layers), MaxLayers)
	}
	if p := r.kindProblem(); p != "" {
		return fmt.Errorf("%w: %s", ErrMalformed, p)
	}
	e.u64(r.Size)
	e.u32(r.Slots)
	e.u32(uint32(r.Kind))
	e.u32(r.Device)
	e.u32(uint32(len(r.Layers)))
	for _, l := range r.Layers {
		e.u64(l.Offset)
		e.u32(l.RowBytes)
	}
	return nil
}

// decode reads the descriptor and checks that every layer's buffer lies
// inside Size, so Row never needs to trust the server.
func (r *RegionDesc) decode(d *dec) {
	r.Size = d.u64()
	r.Slots = d.u32()
	r.Kind = RegionKind(d.u32())
	r.Device = d.u32()
	if p := r.kindProblem(); d.err == nil && p != "" {
		d.fail("%s", p)
		return
	}
	n := d.count("region layers", 12, MaxLayers)
	if d.err != nil {
		return
	}
	r.Layers = make([]RegionLayer, n)
	for i := range r.Layers {
		r.Layers[i] = RegionLayer{Offset: d.u64(), RowBytes: d.u32()}
		if d.err != nil {
			return
		}
		span := uint64(r.Slots) * uint64(r.Layers[i].RowBytes) // < 2^62
		if r.Layers[i].Offset > r.Size || span > r.Size-r.Layers[i].Offset {
			d.fail("region layer %d (offset %d, %d slots × %d bytes) exceeds size %d",
				i, r.Layers[i].Offset, r.Slots, r.Layers[i].RowBytes, r.Size)
			return
		}
	}
}

// encodeStrides appends the layers' strides as an optional trailing list
// (u32 count, then u64 per layer) when any differs from its RowBytes: replies
// to sessions without a page-major reserve stay what older clients decode.
func (r *RegionDesc) encodeStrides(e *enc) {
	for i, l := range r.Layers {
		if r.Stride(i) != uint64(l.RowBytes) {
			e.u32(uint32(len(r.Layers)))
			for i := range r.Layers {
				e.u64(r.Stride(i))
			}
			return
		}
	}
}

// decodeStrides reads encodeStrides' list if the body has more bytes, and
// checks every layer's slots against Size with its stride.
func (r *RegionDesc) decodeStrides(d *dec) {
	if d.err != nil || d.rem() == 0 {
		return
	}
	n := d.count("region strides", 8, MaxLayers)
	if d.err != nil {
		return
	}
	if n != len(r.Layers) {
		d.fail("%d region strides for %d layers", n, len(r.Layers))
		return
	}
	strides := make([]uint64, n)
	for i := range r.Layers {
		st := d.u64()
		if d.err != nil {
			return
		}
		l := r.Layers[i]
		if st < uint64(l.RowBytes) || st > r.Size {
			d.fail("region layer %d stride %d (row %d, size %d)", i, st, l.RowBytes, r.Size)
			return
		}
		if r.Slots > 0 {
			last := uint64(r.Slots-1)*st + uint64(l.RowBytes) // used only when the product cannot overflow (checked first)
			if uint64(r.Slots-1) > r.Size/max(st, 1) || l.Offset > r.Size || last > r.Size-l.Offset {
				d.fail("region layer %d (offset %d, %d slots, stride %d) exceeds size %d", i, l.Offset, r.Slots, st, r.Size)
				return
			}
		}
		strides[i] = st
	}
	for i, st := range strides {
		if st != uint64(r.Layers[i].RowBytes) {
			r.Strides = strides
			return
		}
	}
	d.fail("region strides all equal their rows (omit them)") // one encoding per message
}

// OpenReply answers OPEN; the frame carries the reserve region's fd.
type OpenReply struct {
	Session uint64
	// Region's File is filled in by the receiver from the frame's fd.
	Region Region
}

// AppendBinary implements Message.
func (m *OpenReply) AppendBinary(b []byte) ([]byte, error) {
	e := enc{b}
	e.u64(m.Session)
	if err := m.Region.RegionDesc.encode(&e); err != nil {
		return b, err
	}
	m.Region.RegionDesc.encodeStrides(&e)
	return e.b, nil
}

// Decode implements Message.
func (m *OpenReply) Decode(body []byte) error {
	d := newDec("OPEN reply", body)
	m.Session = d.u64()
	m.Region.RegionDesc.decode(d)
	m.Region.RegionDesc.decodeStrides(d)
	return d.end()
}

// Resume attaches a persisted (or detached) session by name.
type Resume struct{ Name string }

// AppendBinary implements Message.
func (m *Resume) AppendBinary(b []byte) ([]byte, error) {
	e := enc{b}
	if err := e.str("session name", m.Name, MaxNameLen); err != nil {
		return b, err
	}
	return e.b, nil
}

// Decode implements Message.
func (m *Resume) Decode(body []byte) error {
	d := newDec("RESUME", body)
	m.Name = d.str("session name", MaxNameLen)
	if d.err == nil && m.Name == "" {
		d.fail("empty session name")
	}
	return d.end()
}

// ResumeReply answers RESUME: the OPEN reply plus what the client needs to
// check that it resumed what it expects. The frame carries the region fd.
type ResumeReply struct {
	Session uint64
	Chunks  uint64
	Persist bool
	Model   string
	Layout  Layout
	Policy  Policy
	Region  Region
}

// AppendBinary implements Message.
func (m *ResumeReply) AppendBinary(b []byte) ([]byte, error) {
	e := enc{b}
	e.u64(m.Session)
	e.u64(m.Chunks)
	e.bool32(m.Persist)
	if err := e.str("model name", m.Model, MaxNameLen); err != nil {
		return b, err
	}
	m.Policy.encode(&e)
	if err := m.Layout.encode(&e); err != nil {
		return b, err
	}
	if err := m.Region.RegionDesc.encode(&e); err != nil {
		return b, err
	}
	m.Region.RegionDesc.encodeStrides(&e)
	return e.b, nil
}

// Decode implements Message.
func (m *ResumeReply) Decode(body []byte) error {
	d := newDec("RESUME reply", body)
	m.Session = d.u64()
	m.Chunks = d.u64()
	m.Persist = d.bool32("persist")
	m.Model = d.str("model name", MaxNameLen)
	m.Policy.decode(d)
	m.Layout.decode(d)
	m.Region.RegionDesc.decode(d)
	m.Region.RegionDesc.decodeStrides(d)
	return d.end()
}

// Close detaches a session from the connection; with Delete it is removed
// from every tier (including SSD). Without Delete an ephemeral session is
// removed and a persisted one stays resumable.
type Close struct {
	Session uint64
	Delete  bool
}

// AppendBinary implements Message.
func (m *Close) AppendBinary(b []byte) ([]byte, error) {
	e := enc{b}
	e.u64(m.Session)
	e.bool32(m.Delete)
	return e.b, nil
}

// Decode implements Message.
func (m *Close) Decode(body []byte) error {
	d := newDec("CLOSE", body)
	m.Session = d.u64()
	m.Delete = d.bool32("delete")
	return d.end()
}

// Persist flushes a session's pages to SSD and marks it persisted.
// Durability is optional on the wire: a body of 8 bytes (as before) is
// DurabilityLocal; a 12-byte body carries it as a u32 after the session.
// Encoders send the 8-byte form for DurabilityLocal, so daemons that predate
// the field keep accepting them.
type Persist struct {
	Session    uint64
	Durability Durability
}

// Durability is how far PERSIST makes a session durable before replying.
type Durability uint32

const (
	// DurabilityLocal: on this host's SSD (synced).
	DurabilityLocal Durability = 0
	// DurabilityCluster: also on replication_factor members of the
	// daemon's cluster, with the manifest naming them committed through
	// Raft (docs/cluster.md). A daemon without a cluster refuses it.
	DurabilityCluster Durability = 1
)

func (d Durability) String() string {
	switch d {
	case DurabilityLocal:
		return "local"
	case DurabilityCluster:
		return "cluster"
	}
	return fmt.Sprintf("durability(%d)", uint32(d))
}

// AppendBinary implements Message.
func (m *Persist) AppendBinary(b []byte) ([]byte, error) {
	e := enc{b}
	e.u64(m.Session)
	if m.Durability != DurabilityLocal {
		e.u32(uint32(m.Durability))
	}
	return e.b, nil
}

// Decode implements Message.
func (m *Persist) Decode(body []byte) error {
	d := newDec("PERSIST", body)
	m.Session = d.u64()
	m.Durability = DurabilityLocal
	if d.rem() > 0 {
		m.Durability = Durability(d.u32())
		if m.Durability > DurabilityCluster {
			d.fail("durability %d is not local (0) or cluster (1)", uint32(m.Durability))
		}
	}
	return d.end()
}

// Append adds Count prefill chunks starting at FirstChunk (which must equal
// the session's chunk count). The payload (Layout.PayloadBytes(Count) bytes,
// layout in Layout.PayloadOffset) is either in the staging region at
// [Offset, Offset+Length) or, with Inline, in Payload. Keys holds
// Count × target_layers × key_bytes bytes, layer-major (Layout.KeyOffset).
type Append struct {
	Session    uint64
	FirstChunk uint64
	Count      uint32
	Inline     bool
	// Offset and Length locate the payload in the staging region; with
	// Inline, Offset is 0 and Length is len(Payload) (set by AppendBinary).
	Offset  uint64
	Length  uint64
	Keys    []byte
	Payload []byte
}

const appendFlagInline = 1

// AppendBinary implements Message.
func (m *Append) AppendBinary(b []byte) ([]byte, error) {
	e := enc{b}
	e.u64(m.Session)
	e.u64(m.FirstChunk)
	e.u32(m.Count)
	off, length := m.Offset, m.Length
	if m.Inline {
		e.u32(appendFlagInline)
		off, length = 0, uint64(len(m.Payload))
	} else {
		if len(m.Payload) != 0 {
			return b, fmt.Errorf("%w: APPEND payload given without Inline", ErrMalformed)
		}
		e.u32(0)
	}
	e.u64(off)
	e.u64(length)
	if err := e.blob("keys", m.Keys); err != nil {
		return b, err
	}
	if m.Inline {
		e.b = append(e.b, m.Payload...)
	}
	return e.b, nil
}

// Decode implements Message.
func (m *Append) Decode(body []byte) error {
	d := newDec("APPEND", body)
	m.Session = d.u64()
	m.FirstChunk = d.u64()
	m.Count = d.u32()
	flags := d.u32()
	m.Offset = d.u64()
	m.Length = d.u64()
	m.Keys = d.blob()
	m.Inline = flags&appendFlagInline != 0
	m.Payload = nil
	switch {
	case d.err != nil:
	case flags&^appendFlagInline != 0:
		d.fail("unknown flags %#x", flags)
	case m.Inline && m.Offset != 0:
		d.fail("inline payload with staging offset %d", m.Offset)
	case m.Inline && m.Length != uint64(d.rem()):
		d.fail("inline payload length %d, %d bytes follow", m.Length, d.rem())
	case m.Inline:
		m.Payload = d.take(int(m.Length))
	}
	return d.end()
}

// Commit adds Count decode chunks starting at FirstChunk whose payload the
// decoder already wrote into the reserve cells of the session's tail
// allocation. Keys are as in Append.
type Commit struct {
	Session    uint64
	FirstChunk uint64
	Count      uint32
	Keys       []byte
}

// AppendBinary implements Message.
func (m *Commit) AppendBinary(b []byte) ([]byte, error) {
	e := enc{b}
	e.u64(m.Session)
	e.u64(m.FirstChunk)
	e.u32(m.Count)
	e.u32(0)
	if err := e.blob("keys", m.Keys); err != nil {
		return b, err
	}
	return e.b, nil
}

// Decode implements Message.
func (m *Commit) Decode(body []byte) error {
	d := newDec("COMMIT", body)
	m.Session = d.u64()
	m.FirstChunk = d.u64()
	m.Count = d.u32()
	d.zero32("flags")
	m.Keys = d.blob()
	return d.end()
}

// ChunksReply answers APPEND and COMMIT with the session's new chunk count.
type ChunksReply struct{ Chunks uint64 }

// AppendBinary implements Message.
func (m *ChunksReply) AppendBinary(b []byte) ([]byte, error) {
	e := enc{b}
	e.u64(m.Chunks)
	return e.b, nil
}

// Decode implements Message.
func (m *ChunksReply) Decode(body []byte) error {
	d := newDec("chunks reply", body)
	m.Chunks = d.u64()
	return d.end()
}

// CycleEntry is one session's cycle request.
type CycleEntry struct {
	Session  uint64
	Step     uint64
	Position uint64
	// Queries holds one query per target layer, in target-layer order (for
	// the LSA model: the bf16 hidden state, little-endian).
	Queries [][]byte
}

// Cycle carries the cycles of many sessions (the decoder's batch), so the
// daemon can score them in one batched call.
type Cycle struct{ Entries []CycleEntry }

// AppendBinary implements Message.
func (m *Cycle) AppendBinary(b []byte) ([]byte, error) {
	if len(m.Entries) > MaxCycleEntries {
		return b, fmt.Errorf("%w: %d cycle entries, at most %d", ErrMalformed, len(m.Entries), MaxCycleEntries)
	}
	e := enc{b}
	e.u32(uint32(len(m.Entries)))
	for i := range m.Entries {
		en := &m.Entries[i]
		if len(en.Queries) > MaxTargetLayers {
			return b, fmt.Errorf("%w: entry %d has %d queries, at most %d", ErrMalformed, i, len(en.Queries), MaxTargetLayers)
		}
		e.u64(en.Session)
		e.u64(en.Step)
		e.u64(en.Position)
		e.u32(uint32(len(en.Queries)))
		for _, q := range en.Queries {
			if err := e.blob("query", q); err != nil {
				return b, err
			}
		}
	}
	return e.b, nil
}

// Decode implements Message.
func (m *Cycle) Decode(body []byte) error {
	d := newDec("CYCLE", body)
	n := d.count("cycle entries", 28, MaxCycleEntries)
	if d.err != nil {
		return d.err
	}
	m.Entries = make([]CycleEntry, n)
	for i := range m.Entries {
		en := &m.Entries[i]
		en.Session = d.u64()
		en.Step = d.u64()
		en.Position = d.u64()
		nq := d.count("queries", 4, MaxTargetLayers)
		if d.err != nil {
			return d.err
		}
		en.Queries = make([][]byte, nq)
		for q := range en.Queries {
			en.Queries[q] = d.blob()
		}
	}
	return d.end()
}

// PageSlot maps a logical page of the session to a reserve slot.
type PageSlot struct {
	Page uint32
	Slot uint32
}

// CycleCounters are the per-session numbers of one cycle.
type CycleCounters struct {
	Chunks        uint64
	TotalPages    uint32
	ResidentPages uint32
	// ForcedPages are pages kept because they touch the sink or recent tail.
	ForcedPages uint32
	// RecalledPages were copied into the reserve for this cycle's table.
	RecalledPages uint32
	// Fallback reports that the session switched to full residency.
	Fallback bool
	// AboveFraction is the running Σ above-threshold / Σ scored chunks
	// outside sink and recent, the quantity the fallback watches.
	AboveFraction float64
	// WaitMicros is the time the cycle waited for page data: blocked on the
	// previous cycle's background recall still copying, plus the synchronous
	// copies of RecalledPages (docs/protocol.md, CYCLE reply).
	WaitMicros uint64
	// ScoreMicros is the indexer's scoring time for the batch.
	ScoreMicros uint64
}

// CycleResult is one entry's result: Err is set for a failed entry (and
// everything else is zero), otherwise the lease and tables are.
type CycleResult struct {
	Err *Error
	// Lease keeps every slot in Pages and Tail valid until RELEASE.
	Lease uint64
	// Cycle is the session's cycle number.
	Cycle uint64
	// Pages is the page table the decoder may read now (the selection of
	// the previous cycle, applied one cycle late), sorted by page.
	Pages []PageSlot
	// Tail are the slots for pages the next τ steps will produce.
	Tail     []PageSlot
	Counters CycleCounters
	// Damaged are selected pages that could not be served because their
	// stored bytes failed verification (Code INTEGRITY), each with its
	// error; they are missing from Pages, and the other pages are served.
	// Sent only when not empty (cycle flag 2), so replies without damage
	// are unchanged on the wire.
	Damaged []DamagedPage
}

// DamagedPage is a page a CYCLE left out of its table, and why.
type DamagedPage struct {
	Page uint32
	Err  *Error
}

// CycleReply answers CYCLE with one result per entry, in entry order.
type CycleReply struct{ Results []CycleResult }

const (
	cycleFlagFallback = 1
	cycleFlagDamaged  = 2 // a damaged-page list follows the tail table
)

// AppendBinary implements Message.
func (m *CycleReply) AppendBinary(b []byte) ([]byte, error) {
	if len(m.Results) > MaxCycleEntries {
		return b, fmt.Errorf("%w: %d cycle results, at most %d", ErrMalformed, len(m.Results), MaxCycleEntries)
	}
	e := enc{b}
	e.u32(uint32(len(m.Results)))
	for i := range m.Results {
		r := &m.Results[i]
		if r.Err != nil {
			e.errorStatus(r.Err)
			continue
		}
		c := &r.Counters
		e.u32(uint32(CodeOK))
		e.u64(r.Lease)
		e.u64(r.Cycle)
		e.u64(c.Chunks)
		e.u32(c.TotalPages)
		e.u32(c.ResidentPages)
		e.u32(c.ForcedPages)
		e.u32(c.RecalledPages)
		var flags uint32
		if c.Fallback {
			flags |= cycleFlagFallback
		}
		if len(r.Damaged) > 0 {
			if len(r.Damaged) > MaxCycleDamaged {
				return b, fmt.Errorf("%w: %d damaged pages, at most %d", ErrMalformed, len(r.Damaged), MaxCycleDamaged)
			}
			flags |= cycleFlagDamaged
		}
		e.u32(flags)
		e.u32(0)
		e.f64(c.AboveFraction)
		e.u64(c.WaitMicros)
		e.u64(c.ScoreMicros)
		for _, tab := range [][]PageSlot{r.Pages, r.Tail} {
			if uint64(len(tab)) > uint64(MaxBodyLimit/8) {
				return b, fmt.Errorf("%w: page table of %d entries", ErrMalformed, len(tab))
			}
			e.u32(uint32(len(tab)))
			e.b = slices.Grow(e.b, 8*len(tab))
			for _, p := range tab {
				e.b = binary.LittleEndian.AppendUint32(e.b, p.Page)
				e.b = binary.LittleEndian.AppendUint32(e.b, p.Slot)
			}
		}
		if len(r.Damaged) > 0 {
			e.u32(uint32(len(r.Damaged)))
			for _, dp := range r.Damaged {
				e.u32(dp.Page)
				err := dp.Err
				if err == nil {
					err = &Error{Code: CodeIntegrity}
				}
				e.errorStatus(err)
			}
		}
	}
	return e.b, nil
}

// MaxCycleDamaged bounds the damaged-page list of one CYCLE result.
const MaxCycleDamaged = 4096

// Decode implements Message.
func (m *CycleReply) Decode(body []byte) error {
	d := newDec("CYCLE reply", body)
	n := d.count("cycle results", 6, MaxCycleEntries) // smallest: error with empty message
	if d.err != nil {
		return d.err
	}
	m.Results = make([]CycleResult, n)
	for i := range m.Results {
		r := &m.Results[i]
		code := Code(d.u32())
		if code != CodeOK {
			r.Err = &Error{Code: code, Msg: d.str("error message", MaxErrorMsg)}
			continue
		}
		c := &r.Counters
		r.Lease = d.u64()
		r.Cycle = d.u64()
		c.Chunks = d.u64()
		c.TotalPages = d.u32()
		c.ResidentPages = d.u32()
		c.ForcedPages = d.u32()
		c.RecalledPages = d.u32()
		flags := d.u32()
		if flags&^(cycleFlagFallback|cycleFlagDamaged) != 0 {
			d.fail("unknown cycle flags %#x", flags)
		}
		c.Fallback = flags&cycleFlagFallback != 0
		d.zero32("cycle reserved")
		c.AboveFraction = d.f64()
		c.WaitMicros = d.u64()
		c.ScoreMicros = d.u64()
		r.Pages = decodePageSlots(d, "pages")
		r.Tail = decodePageSlots(d, "tail")
		if flags&cycleFlagDamaged != 0 {
			n := d.count("damaged pages", 10, MaxCycleDamaged)
			if d.err == nil && n == 0 {
				d.fail("damaged-page flag with an empty list")
			}
			for i := 0; i < n && d.err == nil; i++ {
				p := d.u32()
				code := Code(d.u32())
				msg := d.str("damaged page error", MaxErrorMsg)
				if d.err == nil && code == CodeOK {
					d.fail("damaged page %d with status OK", p)
				}
				r.Damaged = append(r.Damaged, DamagedPage{Page: p, Err: &Error{Code: code, Msg: msg}})
			}
		}
		if d.err != nil {
			return d.err
		}
	}
	return d.end()
}

func decodePageSlots(d *dec, field string) []PageSlot {
	n := d.count(field, 8, int(MaxBodyLimit/8))
	if d.err != nil {
		return nil
	}
	// One bounds check for the whole table: page tables are the bulk of
	// a CYCLE reply.
	raw := d.take(8 * n)
	ps := make([]PageSlot, n)
	for i := range ps {
		p := raw[8*i : 8*i+8 : 8*i+8]
		ps[i] = PageSlot{Page: binary.LittleEndian.Uint32(p), Slot: binary.LittleEndian.Uint32(p[4:])}
	}
	return ps
}

// Release returns leases; their slots may be reused afterwards.
type Release struct{ Leases []uint64 }

// AppendBinary implements Message.
func (m *Release) AppendBinary(b []byte) ([]byte, error) {
	if len(m.Leases) > MaxLeases {
		return b, fmt.Errorf("%w: %d leases, at most %d", ErrMalformed, len(m.Leases), MaxLeases)
	}
	e := enc{b}
	e.u32(uint32(len(m.Leases)))
	for _, l := range m.Leases {
		e.u64(l)
	}
	return e.b, nil
}

// Decode implements Message.
func (m *Release) Decode(body []byte) error {
	d := newDec("RELEASE", body)
	n := d.count("leases", 8, MaxLeases)
	if d.err != nil {
		return d.err
	}
	m.Leases = make([]uint64, n)
	for i := range m.Leases {
		m.Leases[i] = d.u64()
	}
	return d.end()
}

// errorStatus writes an error's code and message, as an error body and a
// failed CYCLE entry both carry them. It cannot fail: the message is clipped
// to a valid string, and code 0 (which would read as success) becomes
// CodeInternal.
func (e *enc) errorStatus(err *Error) {
	code := err.Code
	if code == CodeOK {
		code = CodeInternal
	}
	e.u32(uint32(code))
	msg := clipMsg(err.Msg)
	e.u16(uint16(len(msg)))
	e.b = append(e.b, msg...)
}

// clipMsg cuts an error message to MaxErrorMsg bytes and replaces invalid
// UTF-8 (including a rune cut in half) with "?", which never lengthens it.
func clipMsg(s string) string {
	if len(s) > MaxErrorMsg {
		s = s[:MaxErrorMsg]
	}
	return strings.ToValidUTF8(s, "?")
}
