package gpu

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/flashmemory/flashmemory/attn"
)

// HeadDim is the only head dimension the kernel supports (the published indexer's).
const HeadDim = 128

// KeyRecord is the size of one raw index key: HeadDim fp8 codes, then a little-endian
// float32 scale (the layout attn.KeyStore ingests).
const KeyRecord = HeadDim + 4

// tileChunks is the number of chunks one kernel block scores (8 warps x 32 chunks).
const tileChunks = 256

// fragWordsPerHead is the uint32 count of one head's packed fragments: 8 k-steps x 4
// lanes x 4 words (hi b0b1, hi b2b3, lo b0b1, lo b2b3).
const fragWordsPerHead = 8 * 4 * 4

// keyScale is the factor the kernel's fp8 -> f16 bit shift applies to every key code.
const keyScale = 1.0 / 256

// f16FromF32 rounds f to IEEE binary16, to nearest even, subnormals included.
func f16FromF32(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	abs := b & 0x7fffffff
	switch {
	case abs == 0:
		return sign
	case abs >= 0x7f800000: // inf, NaN
		if abs > 0x7f800000 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	exp := int(abs>>23) - 127 + 15
	m := abs&0x7fffff | 0x800000 // 24-bit significand (f32 subnormals flush through exp < -10)
	var shift uint
	var base uint32
	if exp >= 1 {
		shift, base = 13, uint32(exp-1)<<10 // the implicit bit adds the last 1<<10
	} else {
		if exp < -10 {
			return sign
		}
		shift = uint(14 - exp)
	}
	q := m >> shift
	rem := m & (1<<shift - 1)
	half := uint32(1) << (shift - 1)
	if rem > half || rem == half && q&1 == 1 {
		q++
	}
	v := base + q
	if v >= 0x7c00 {
		return sign | 0x7c00
	}
	return sign | uint16(v)
}

// f16ToF32 widens an IEEE binary16 value.
func f16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
	case man == 0:
		return math.Float32frombits(sign)
	}
	return math.Float32frombits(sign) + float32(man)*(1.0/(1<<24))*signOf(h)
}

func signOf(h uint16) float32 {
	if h&0x8000 != 0 {
		return -1
	}
	return 1
}

// fragIndex returns the uint32 word and half (0 low, 1 high) holding dim d of a head in
// its packed fragments, for the hi part (the lo part is 2 words further). It encodes the
// kernel's k permutation: thread c owns dims [32c, 32c+32), k-step kk dims 32c+4kk+{0..3};
// dims +{0,1} go to register b0b1, +{2,3} to b2b3.
func fragIndex(g, d int) (word, half int) {
	c, kk, i := d/32, (d%32)/4, d%4
	lane := g*4 + c
	return (kk*32+lane)*4 + i/2, i % 2
}

// packedQuery is one query in the kernel's layout.
type packedQuery struct {
	frag  []uint32  // [heads/8][8 k-steps][32 lanes][4]
	w     []float32 // [heads] folded weights
	useLo bool      // some head needed a lo part
}

// packQuery lays out one query for the kernel. For the float variant the head values are
// q.Q and the multipliers q.W; for fp8-q the decoded fp8 codes Q8 and W·QScale. Each head
// is divided by a power of two 2^e ≥ its max |value| and split into f16 hi + lo; the
// weight absorbs 2^e and the 2^8 the kernel's key decoding divides by (both exact).
func packQuery(v attn.Variant, q *attn.Query, frag []uint32, w []float32) (useLo bool, err error) {
	if q.HeadDim != HeadDim || q.Heads <= 0 || q.Heads%8 != 0 {
		return false, fmt.Errorf("gpu: query with %d heads of dim %d (want dim %d, heads a multiple of 8): %w",
			q.Heads, q.HeadDim, HeadDim, ErrShape)
	}
	h := q.Heads
	if len(q.W) != h || len(frag) != h*fragWordsPerHead || len(w) != h {
		return false, fmt.Errorf("gpu: query buffers (W %d, frag %d, w %d) for %d heads: %w", len(q.W), len(frag), len(w), h, ErrShape)
	}
	var vals []float32
	switch v {
	case attn.Float:
		if len(q.Q) != h*HeadDim {
			return false, fmt.Errorf("gpu: Q has %d values for %d heads: %w", len(q.Q), h, ErrShape)
		}
		vals = q.Q
	case attn.FP8Q:
		if len(q.Q8) != h*HeadDim || len(q.QScale) != h {
			return false, fmt.Errorf("gpu: Q8/QScale have %d/%d values for %d heads: %w", len(q.Q8), len(q.QScale), h, ErrShape)
		}
		vals = make([]float32, h*HeadDim)
		for i, c := range q.Q8 {
			vals[i] = attn.FP8ToF32(c)
		}
	default:
		return false, fmt.Errorf("gpu: variant %v: %w", v, ErrShape)
	}
	clear(frag)
	for hh := 0; hh < h; hh++ {
		head := vals[hh*HeadDim : (hh+1)*HeadDim]
		var amax float32
		for _, x := range head {
			amax = max(amax, float32(math.Abs(float64(x))))
		}
		pow := float32(1)
		if amax > 0 {
			_, e := math.Frexp(float64(amax)) // amax = f·2^e, f in [0.5, 1)
			pow = float32(math.Ldexp(1, e))
		}
		m := q.W[hh]
		if v == attn.FP8Q {
			m *= q.QScale[hh]
		}
		w[hh] = m * pow / keyScale
		blk := frag[(hh/8)*8*32*4:]
		g := hh % 8
		for d, x := range head {
			x /= pow
			hi := f16FromF32(x)
			lo := f16FromF32(x - f16ToF32(hi))
			if lo&0x7fff != 0 {
				useLo = true
			}
			wi, half := fragIndex(g, d)
			blk[wi] |= uint32(hi) << (16 * half)
			blk[wi+2] |= uint32(lo) << (16 * half)
		}
	}
	return useLo, nil
}

// splitKeys copies raw KeyRecord-byte keys into separate code and scale arrays.
func splitKeys(raw []byte, codes []byte, scales []float32) error {
	if len(raw)%KeyRecord != 0 {
		return fmt.Errorf("gpu: %d key bytes is not a multiple of %d: %w", len(raw), KeyRecord, ErrShape)
	}
	n := len(raw) / KeyRecord
	if len(codes) < n*HeadDim || len(scales) < n {
		return fmt.Errorf("gpu: key buffers too small for %d keys: %w", n, ErrShape)
	}
	for i := 0; i < n; i++ {
		r := raw[i*KeyRecord:]
		copy(codes[i*HeadDim:], r[:HeadDim])
		scales[i] = math.Float32frombits(binary.LittleEndian.Uint32(r[HeadDim:]))
	}
	return nil
}

// keySetDesc mirrors the kernel's KeySet struct (40 bytes, 8-byte aligned).
type keySetDesc struct {
	Codes, Scales, Out uint64
	N, QFirst, QCount  uint32
	TileFirst          uint32
}

// layoutSets assigns each set its first tile and first query; it returns the total tiles
// (the grid) and queries.
func layoutSets(sets []keySetDesc) (tiles, queries int) {
	for i := range sets {
		sets[i].TileFirst = uint32(tiles)
		sets[i].QFirst = uint32(queries)
		tiles += (int(sets[i].N) + tileChunks - 1) / tileChunks
		queries += int(sets[i].QCount)
	}
	return tiles, queries
}
