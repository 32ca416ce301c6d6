package indexer

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
)

// Persisted request state, little-endian:
//
//	"FMIR" version(1)
//	u32 layers, layers × i32 layer id, u32 key bytes, u32 chunks per page, u8 ensemble
//	u64 chunks, u64 cycle, u64 Σabove, u64 Σoutside, u8 fallback
//	u32 n, n × u32 previous selection (sorted)
//	u32 n, n × f32 lookahead EWMA per page
//	per layer: chunks × key bytes of raw keys
//	u32 CRC32C (Castagnoli) of everything before it
//
// The model's identity (layer ids, key size) and the page size are checked on restore
// because keys and page indices mean nothing under another model or page size.
const (
	stateMagic   = "FMIR"
	deltaMagic   = "FMID"
	stateVersion = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// MarshalBinary encodes the request's keys and selection state (not the model or policy;
// restore with NewRequest(model, policy) and UnmarshalBinary).
func (r *Request) MarshalBinary() ([]byte, error) { return r.marshal(stateMagic, 0) }

// MarshalDelta encodes what changed since the request held its first from chunks: the
// selection state and the keys of chunks [from, Len()). MergeState applies it to the full
// state of those from chunks (MarshalBinary's, or an earlier merge's). Keys are append-only
// (Truncate only undoes appends past the last stored chunk), so a delta is O(new chunks +
// pages) bytes while the full state grows with the session.
//
//	"FMID" version(1), the full state's fields with u64 from before u64 chunks, and per
//	layer only the keys of chunks [from, chunks); u32 CRC32C of everything before it.
func (r *Request) MarshalDelta(from int) ([]byte, error) {
	if from < 0 || from > r.n {
		return nil, fmt.Errorf("%w: delta from chunk %d of %d", ErrBadState, from, r.n)
	}
	return r.marshal(deltaMagic, from)
}

func (r *Request) marshal(magic string, from int) ([]byte, error) {
	layers := r.model.Layers()
	kb := r.model.KeyBytes()
	size := 5 + 4 + 4*len(layers) + 4 + 4 + 1 + 8 + 8*4 + 1 + 4 + 4*len(r.sel.prev) + 4 + 4*len(r.sel.ewma) + len(layers)*(r.n-from)*kb + 4
	b := make([]byte, 0, size)
	b = append(b, magic...)
	b = append(b, stateVersion)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(layers)))
	for _, id := range layers {
		b = binary.LittleEndian.AppendUint32(b, uint32(int32(id)))
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(kb))
	b = binary.LittleEndian.AppendUint32(b, uint32(r.policy.ChunksPerPage))
	b = append(b, byte(r.ensemble))
	if magic == deltaMagic {
		b = binary.LittleEndian.AppendUint64(b, uint64(from))
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(r.n))
	b = binary.LittleEndian.AppendUint64(b, r.sel.cycle)
	b = binary.LittleEndian.AppendUint64(b, r.sel.cumAbove)
	b = binary.LittleEndian.AppendUint64(b, r.sel.cumOutside)
	b = append(b, boolByte(r.sel.fallback))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(r.sel.prev)))
	for _, p := range r.sel.prev {
		b = binary.LittleEndian.AppendUint32(b, p)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(r.sel.ewma)))
	for _, e := range r.sel.ewma {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(e))
	}
	for l, k := range r.keys {
		before := len(b)
		if b = k.AppendRaw(b, from, r.n-from); len(b)-before != (r.n-from)*kb {
			return nil, fmt.Errorf("%w: target layer %d: key store returned %d bytes for %d keys", ErrBadState, layers[l], len(b)-before, r.n-from)
		}
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

// UnmarshalBinary replaces the request's keys and selection state with the encoded ones. The
// request must have been made with the same model (layer ids, key size) and page size. On
// error the request is unchanged. Lengths are checked against the input before anything is
// allocated, so a corrupt input cannot make it allocate more than about its own size.
func (r *Request) UnmarshalBinary(data []byte) error {
	if len(data) < 5+4 {
		return fmt.Errorf("%w: %d bytes is too short", ErrBadState, len(data))
	}
	if string(data[:4]) != stateMagic {
		return fmt.Errorf("%w: magic %q, want %q", ErrBadState, data[:4], stateMagic)
	}
	if data[4] != stateVersion {
		return fmt.Errorf("%w: version %d, want %d", ErrBadState, data[4], stateVersion)
	}
	body, sum := data[:len(data)-4], binary.LittleEndian.Uint32(data[len(data)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return fmt.Errorf("%w: checksum %08x, stored %08x", ErrBadState, got, sum)
	}
	d := stateDecoder{b: body[5:]}

	layers := r.model.Layers()
	if nl := d.u32("layer count"); d.err == nil && int(nl) != len(layers) {
		return fmt.Errorf("%w: %d target layers, model has %d", ErrBadState, nl, len(layers))
	}
	for i, id := range layers {
		if got := int32(d.u32("layer id")); d.err == nil && int(got) != id {
			return fmt.Errorf("%w: target layer %d is %d, model has %d", ErrBadState, i, got, id)
		}
	}
	kb := r.model.KeyBytes()
	if got := d.u32("key bytes"); d.err == nil && int(got) != kb {
		return fmt.Errorf("%w: key bytes %d, model has %d", ErrBadState, got, kb)
	}
	if got := d.u32("chunks per page"); d.err == nil && int(got) != r.policy.ChunksPerPage {
		return fmt.Errorf("%w: chunks per page %d, policy has %d", ErrBadState, got, r.policy.ChunksPerPage)
	}
	ens := Ensemble(d.u8("ensemble"))
	n64 := d.u64("chunks")
	var s selector
	s.cycle = d.u64("cycle")
	s.cumAbove = d.u64("above sum")
	s.cumOutside = d.u64("outside sum")
	fb := d.u8("fallback")
	if d.err != nil {
		return d.err
	}
	if ens != EnsembleMax && ens != EnsembleMean {
		return fmt.Errorf("%w: ensemble %d", ErrBadState, ens)
	}
	if n64 > uint64(r.policy.MaxChunks) {
		return fmt.Errorf("%w: %d chunks exceeds MaxChunks %d", ErrBadState, n64, r.policy.MaxChunks)
	}
	if s.cumAbove > s.cumOutside {
		return fmt.Errorf("%w: above sum %d > outside sum %d", ErrBadState, s.cumAbove, s.cumOutside)
	}
	if fb > 1 {
		return fmt.Errorf("%w: fallback byte %d", ErrBadState, fb)
	}
	s.fallback = fb == 1
	n := int(n64)
	pages := pageCount(n, r.policy.ChunksPerPage)

	np := d.count("selection", pages, 4)
	s.prev = make([]uint32, np)
	for i := range s.prev {
		s.prev[i] = d.u32("selection")
		if d.err == nil && (s.prev[i] >= uint32(pages) || i > 0 && s.prev[i] <= s.prev[i-1]) {
			return fmt.Errorf("%w: selection entry %d (page %d) out of order or past page %d", ErrBadState, i, s.prev[i], pages)
		}
	}
	ne := d.count("ewma", pages, 4)
	s.ewma = make([]float32, ne)
	for i := range s.ewma {
		s.ewma[i] = math.Float32frombits(d.u32("ewma"))
		if e := s.ewma[i]; d.err == nil && !(e >= 0 && e <= float32(r.policy.ChunksPerPage)) {
			return fmt.Errorf("%w: ewma of page %d is %v", ErrBadState, i, e)
		}
	}
	if d.err != nil {
		return d.err
	}
	if want := uint64(len(layers)) * n64 * uint64(kb); uint64(len(d.b)) != want {
		return fmt.Errorf("%w: %d key bytes for %d chunks × %d layers × %d bytes (%d)", ErrBadState, len(d.b), n, len(layers), kb, want)
	}
	keys := make([]Keys, len(layers))
	for l := range keys {
		k, err := r.model.NewKeys()
		if err != nil {
			return fmt.Errorf("target layer %d: %w", layers[l], err)
		}
		keys[l] = k
		raw := d.b[l*n*kb : (l+1)*n*kb]
		if err := keys[l].Append(raw); err != nil {
			return fmt.Errorf("%w: target layer %d: %w", ErrBadState, layers[l], err)
		}
	}
	r.keys, r.n, r.sel, r.ensemble = keys, n, s, ens
	r.scores = r.scores[:0]
	return nil
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// stateDecoder reads fixed-size fields and remembers the first short read.
type stateDecoder struct {
	b   []byte
	err error
}

func (d *stateDecoder) need(n int, what string) bool {
	if d.err != nil {
		return false
	}
	if len(d.b) < n {
		d.err = fmt.Errorf("%w: truncated at %s", ErrBadState, what)
		return false
	}
	return true
}

func (d *stateDecoder) u8(what string) uint8 {
	if !d.need(1, what) {
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *stateDecoder) u32(what string) uint32 {
	if !d.need(4, what) {
		return 0
	}
	v := binary.LittleEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *stateDecoder) u64(what string) uint64 {
	if !d.need(8, what) {
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

// count reads an element count, bounded by limit and by the bytes left (elem bytes each).
func (d *stateDecoder) count(what string, limit, elem int) int {
	c := d.u32(what + " count")
	if d.err != nil {
		return 0
	}
	if uint64(c) > uint64(limit) || uint64(c)*uint64(elem) > uint64(len(d.b)) {
		d.err = fmt.Errorf("%w: %s count %d (limit %d, %d bytes left)", ErrBadState, what, c, limit, len(d.b))
		return 0
	}
	return int(c)
}
