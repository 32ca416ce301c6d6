package attn

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
)

const (
	// blockKeys is the number of keys the kernel scores at once: three 8-lane
	// vectors, so that 3 key vectors × 4 query rows of accumulators fill 12 of the 16
	// AVX2 registers.
	blockKeys = 24
	// slabBlocks blocks form one slab; slabs let the store grow without copying
	// what it already holds (a 1M-token context is 256K keys per layer).
	slabBlocks = 128
	slabKeys   = slabBlocks * blockKeys
)

// KeyStore holds one layer's compressed index keys in the layout the scoring
// kernel reads. Keys arrive as raw bytes (HeadDim fp8 e4m3fn codes, then a
// little-endian float32 scale) and are appended only; the fp8 codes are kept as
// bytes (no dequantised copy), transposed into blocks of 24 keys × HeadDim so that
// one load yields the same element of 8 keys. Raw bytes round-trip exactly
// through AppendRaw.
//
// A KeyStore is not safe for concurrent mutation; any number of goroutines may
// score against it while nobody appends or truncates.
type KeyStore struct {
	headDim int
	n       int
	slabs   [][]uint8 // each [blocks][headDim][blockKeys]; full slabs hold slabKeys keys
	scales  []float32
	// exotic lists, in ascending order, keys whose scale is negative, infinite or
	// NaN. For them s·ReLU(x) ≠ ReLU(s·x), so the float variant scores them with the
	// direct formula instead of factoring the scale out of the kernel.
	exotic []int
	// nanKeys lists, in ascending order, keys holding an fp8 NaN code (0x7F,
	// 0xFF). Every logit of such a key is NaN in both variants, and the SIMD decode
	// does not produce NaN, so the scorer overrides them.
	nanKeys []int
}

// NewKeyStore returns an empty store for keys of headDim fp8 values plus a scale.
func NewKeyStore(headDim int) (*KeyStore, error) {
	if headDim <= 0 || headDim > 1<<16 {
		return nil, fmt.Errorf("%w: head dim %d", ErrConfig, headDim)
	}
	return &KeyStore{headDim: headDim}, nil
}

// HeadDim returns the number of fp8 values per key.
func (ks *KeyStore) HeadDim() int { return ks.headDim }

// KeyBytes returns the raw size of one key: HeadDim + 4.
func (ks *KeyStore) KeyBytes() int { return ks.headDim + 4 }

// Len returns the number of keys stored.
func (ks *KeyStore) Len() int { return ks.n }

// Append adds len(raw)/KeyBytes keys. It fails, storing nothing, if raw is not a
// whole number of keys.
func (ks *KeyStore) Append(raw []byte) error {
	kb := ks.KeyBytes()
	if len(raw)%kb != 0 {
		return fmt.Errorf("%w: %d bytes is not a multiple of %d", ErrKeyLength, len(raw), kb)
	}
	d := ks.headDim
	for off := 0; off < len(raw); off += kb {
		key := raw[off : off+kb]
		i := ks.n
		slab := i / slabKeys
		if slab == len(ks.slabs) {
			ks.slabs = append(ks.slabs, nil)
		}
		within := i % slabKeys
		blk, lane := within/blockKeys, within%blockKeys
		if lane == 0 {
			// Start a zeroed block: the kernel always reads all 24 lanes, and a code of
			// 0 adds exactly nothing.
			s := ks.slabs[slab]
			s = slices.Grow(s, d*blockKeys)
			ks.slabs[slab] = s[:len(s)+d*blockKeys]
			clear(ks.slabs[slab][len(s):])
		}
		dst := ks.slabs[slab][blk*d*blockKeys+lane:]
		hasNaN := false
		for j, c := range key[:d] {
			dst[j*blockKeys] = c
			hasNaN = hasNaN || c&0x7f == 0x7f
		}
		if hasNaN {
			ks.nanKeys = append(ks.nanKeys, i)
		}
		s := math.Float32frombits(binary.LittleEndian.Uint32(key[d:]))
		ks.scales = append(ks.scales, s)
		if !(s >= 0 && s <= math.MaxFloat32) {
			ks.exotic = append(ks.exotic, i)
		}
		ks.n++
	}
	return nil
}

// Truncate drops keys n and later (a no-op if n ≥ Len; n < 0 counts as 0), so a
// caller can undo a partially applied append.
func (ks *KeyStore) Truncate(n int) {
	n = max(n, 0)
	if n >= ks.n {
		return
	}
	d := ks.headDim
	blocks := (n + blockKeys - 1) / blockKeys // blocks still in use
	slab := blocks / slabBlocks
	if blocks%slabBlocks == 0 {
		for i := slab; i < len(ks.slabs); i++ {
			ks.slabs[i] = nil
		}
		ks.slabs = ks.slabs[:slab]
	} else {
		for i := slab + 1; i < len(ks.slabs); i++ {
			ks.slabs[i] = nil
		}
		ks.slabs = ks.slabs[:slab+1]
		ks.slabs[slab] = ks.slabs[slab][:(blocks%slabBlocks)*d*blockKeys]
		// Zero the dropped lanes of the last partial block: unused lanes must stay 0.
		if lane := n % blockKeys; lane != 0 {
			b := ks.slabs[slab][((blocks-1)%slabBlocks)*d*blockKeys:]
			for j := 0; j < d; j++ {
				clear(b[j*blockKeys+lane : (j+1)*blockKeys])
			}
		}
	}
	ks.scales = ks.scales[:n]
	ks.exotic = cutList(ks.exotic, n)
	ks.nanKeys = cutList(ks.nanKeys, n)
	ks.n = n
}

// AppendRaw appends the raw bytes of keys [first, first+n) to dst, exactly as
// they were appended; only the part of the range inside [0, Len) is appended.
func (ks *KeyStore) AppendRaw(dst []byte, first, n int) []byte {
	lo, hi := max(first, 0), min(first+max(n, 0), ks.n)
	d := ks.headDim
	for i := lo; i < hi; i++ {
		codes := ks.block(i / blockKeys)[i%blockKeys:]
		for j := 0; j < d; j++ {
			dst = append(dst, codes[j*blockKeys])
		}
		dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(ks.scales[i]))
	}
	return dst
}

// block returns the codes of global block b: [headDim][blockKeys].
func (ks *KeyStore) block(b int) []uint8 {
	sz := ks.headDim * blockKeys
	off := (b % slabBlocks) * sz
	return ks.slabs[b/slabBlocks][off : off+sz]
}

// Key returns key i dequantised (fp8 value · scale), the float variant's k.
func (ks *KeyStore) Key(i int) ([]float32, error) {
	if i < 0 || i >= ks.n {
		return nil, fmt.Errorf("%w: key %d of %d", ErrRange, i, ks.n)
	}
	codes := ks.block(i / blockKeys)[i%blockKeys:]
	k := make([]float32, ks.headDim)
	s := ks.scales[i]
	for j := range k {
		k[j] = FP8ToF32(codes[j*blockKeys]) * s
	}
	return k, nil
}

// cutList drops the entries ≥ n of an ascending list.
func cutList(l []int, n int) []int {
	k := len(l)
	for k > 0 && l[k-1] >= n {
		k--
	}
	return l[:k]
}

// inRange returns the entries of an ascending list that lie in [from, to).
func inRange(l []int, from, to int) []int {
	lo, _ := slices.BinarySearch(l, from)
	hi, _ := slices.BinarySearch(l, to)
	return l[lo:hi]
}
