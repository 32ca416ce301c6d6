package synth

import (
	"encoding/binary"
	"math"
	"math/rand/v2"

	"github.com/flashmemory/flashmemory/attn"
	"github.com/flashmemory/flashmemory/proto"
)

// mix is splitmix64: a cheap, well-mixed function of (seed, chunk, layer).
func mix(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
	x = (x ^ (x >> 27)) * 0x94D049BB133111EB
	return x ^ (x >> 31)
}

// fill writes the deterministic bytes of one chunk's segment.
func fill(dst []byte, seed, chunk uint64, layer, seg int) {
	s := mix(seed ^ mix(chunk<<16|uint64(layer)<<4|uint64(seg)))
	i := 0
	for ; i+8 <= len(dst); i += 8 {
		s = mix(s)
		binary.LittleEndian.PutUint64(dst[i:], s)
	}
	if i < len(dst) {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], mix(s))
		copy(dst[i:], b[:])
	}
}

// FillAppend writes the payload of chunks [first, first+n) in the APPEND
// layout (layer-major, segment-major; proto.Layout.PayloadOffset) into dst,
// which must be Layout.PayloadBytes(n) long.
func FillAppend(l *proto.Layout, seed, first, n uint64, dst []byte) {
	for ly, layer := range l.Layers {
		for s, sz := range layer.Segments {
			for i := uint64(0); i < n; i++ {
				off := l.PayloadOffset(n, ly, s, i)
				fill(dst[off:off+uint64(sz)], seed, first+i, ly, s)
			}
		}
	}
}

// FillCell writes chunk's segments of one layer into a page row laid out as
// in the reserve (what a decoder kernel does during decode).
func FillCell(l *proto.Layout, seed, chunk uint64, ly int, row []byte) {
	c := uint32(chunk % uint64(l.ChunksPerPage))
	for s, sz := range l.Layers[ly].Segments {
		off := l.RowOffset(ly, s, c)
		fill(row[off:off+uint64(sz)], seed, chunk, ly, s)
	}
}

// CheckRow compares a reserve row of page p in layer ly with the bytes the
// first `chunks` chunks of the session must have there. It returns the
// first chunk whose bytes differ, or -1.
func CheckRow(l *proto.Layout, seed uint64, p uint32, ly int, chunks uint64, row []byte) int64 {
	cpp := uint64(l.ChunksPerPage)
	var want []byte
	for c := uint64(0); c < cpp; c++ {
		ch := uint64(p)*cpp + c
		if ch >= chunks {
			break
		}
		for s, sz := range l.Layers[ly].Segments {
			if cap(want) < int(sz) {
				want = make([]byte, sz)
			}
			want = want[:sz]
			fill(want, seed, ch, ly, s)
			off := l.RowOffset(ly, s, uint32(c))
			if string(row[off:off+uint64(sz)]) != string(want) {
				return int64(ch)
			}
		}
	}
	return -1
}

// Key writes one valid LSA index key of headDim fp8 bytes plus a float32
// scale: finite fp8 codes drawn uniformly, scale in [0.5, 1.5).
func Key(r *rand.Rand, headDim int, dst []byte) {
	for i := 0; i < headDim; i++ {
		for {
			b := byte(r.Uint32())
			if b&0x7F != 0x7F { // 0x7F and 0xFF are NaN in e4m3fn
				dst[i] = b
				break
			}
		}
	}
	binary.LittleEndian.PutUint32(dst[headDim:], math.Float32bits(0.5+r.Float32()))
}

// Keys returns index keys for n chunks and t target layers in the APPEND
// layout (layer-major), keyBytes each.
func Keys(r *rand.Rand, t, keyBytes int, n uint64) []byte {
	out := make([]byte, uint64(t*keyBytes)*n)
	for i := 0; i < len(out); i += keyBytes {
		Key(r, keyBytes-4, out[i:i+keyBytes])
	}
	return out
}

// Hidden returns a bf16 hidden state of size dims, N(0, 1) entries.
func Hidden(r *rand.Rand, dims int) []byte {
	out := make([]byte, 2*dims)
	for i := 0; i < dims; i++ {
		binary.LittleEndian.PutUint16(out[2*i:], attn.BF16FromF32(float32(r.NormFloat64())))
	}
	return out
}
