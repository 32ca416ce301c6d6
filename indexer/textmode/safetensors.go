package textmode

// A minimal safetensors writer and reader, private to this package because
// internal/safetensors had not landed when the text-mode model was written. The
// integrator may switch to it; the format is the standard one (8-byte
// little-endian header length, JSON header, raw little-endian tensor bytes).

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
)

// maxHeaderBytes bounds the JSON header so a corrupt length cannot make the
// reader allocate gigabytes; the model's header is well under 4 KiB.
const maxHeaderBytes = 1 << 20

type stTensor struct {
	name  string
	dtype string // "F32" or "F16"
	shape []int
	data  []byte
}

type stHeaderEntry struct {
	Dtype   string  `json:"dtype"`
	Shape   []int64 `json:"shape"`
	Offsets []int64 `json:"data_offsets"`
}

func dtypeSize(dt string) int {
	switch dt {
	case "F32":
		return 4
	case "F16", "BF16":
		return 2
	case "U8", "I8":
		return 1
	}
	return 0
}

// writeSafetensors writes tensors (in name order, so the bytes are
// deterministic) and metadata to w.
func writeSafetensors(w io.Writer, tensors []stTensor, meta map[string]string) error {
	ts := slices.Clone(tensors)
	sort.Slice(ts, func(i, j int) bool { return ts[i].name < ts[j].name })
	hdr := map[string]any{}
	if len(meta) > 0 {
		hdr["__metadata__"] = meta
	}
	var off int64
	for _, t := range ts {
		shape := make([]int64, len(t.shape))
		for i, d := range t.shape {
			shape[i] = int64(d)
		}
		hdr[t.name] = stHeaderEntry{Dtype: t.dtype, Shape: shape, Offsets: []int64{off, off + int64(len(t.data))}}
		off += int64(len(t.data))
	}
	js, err := json.Marshal(hdr) // map keys are sorted: deterministic
	if err != nil {
		return fmt.Errorf("textmode: encoding safetensors header: %w", err)
	}
	// Pad the header with spaces to 8 bytes so tensor data is aligned.
	for len(js)%8 != 0 {
		js = append(js, ' ')
	}
	var lenb [8]byte
	binary.LittleEndian.PutUint64(lenb[:], uint64(len(js)))
	if _, err := w.Write(lenb[:]); err != nil {
		return err
	}
	if _, err := w.Write(js); err != nil {
		return err
	}
	for _, t := range ts {
		if _, err := w.Write(t.data); err != nil {
			return err
		}
	}
	return nil
}

// parseSafetensors checks and splits a whole safetensors file. Every offset and
// size is checked against the file before use; the returned tensors alias b.
func parseSafetensors(b []byte) (map[string]stTensor, map[string]string, error) {
	if len(b) < 8 {
		return nil, nil, fmt.Errorf("%w: %d bytes, shorter than the 8-byte header length", ErrBadFile, len(b))
	}
	hl := binary.LittleEndian.Uint64(b[:8])
	if hl > maxHeaderBytes || hl > uint64(len(b)-8) {
		return nil, nil, fmt.Errorf("%w: header length %d exceeds file (%d bytes) or limit %d", ErrBadFile, hl, len(b), maxHeaderBytes)
	}
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b[8 : 8+hl]))
	if err := dec.Decode(&raw); err != nil {
		return nil, nil, fmt.Errorf("%w: header JSON: %v", ErrBadFile, err)
	}
	data := b[8+hl:]
	meta := map[string]string{}
	tensors := map[string]stTensor{}
	type span struct {
		lo, hi int64
		name   string
	}
	var spans []span
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &meta); err != nil {
				return nil, nil, fmt.Errorf("%w: __metadata__ is not a string map: %v", ErrBadFile, err)
			}
			continue
		}
		var e stHeaderEntry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, nil, fmt.Errorf("%w: tensor %q: %v", ErrBadFile, name, err)
		}
		es := dtypeSize(e.Dtype)
		if es == 0 {
			return nil, nil, fmt.Errorf("%w: tensor %q: unsupported dtype %q", ErrBadFile, name, e.Dtype)
		}
		if len(e.Offsets) != 2 || e.Offsets[0] < 0 || e.Offsets[1] < e.Offsets[0] || e.Offsets[1] > int64(len(data)) {
			return nil, nil, fmt.Errorf("%w: tensor %q: data_offsets %v outside data of %d bytes", ErrBadFile, name, e.Offsets, len(data))
		}
		n := int64(es)
		shape := make([]int, len(e.Shape))
		for i, d := range e.Shape {
			if d < 0 || (d > 0 && n > math.MaxInt32/d) {
				return nil, nil, fmt.Errorf("%w: tensor %q: shape %v negative or too large", ErrBadFile, name, e.Shape)
			}
			n *= d
			shape[i] = int(d)
		}
		if n != e.Offsets[1]-e.Offsets[0] {
			return nil, nil, fmt.Errorf("%w: tensor %q: shape %v × %d B = %d B, offsets span %d B", ErrBadFile, name, e.Shape, es, n, e.Offsets[1]-e.Offsets[0])
		}
		spans = append(spans, span{e.Offsets[0], e.Offsets[1], name})
		tensors[name] = stTensor{name: name, dtype: e.Dtype, shape: shape, data: data[e.Offsets[0]:e.Offsets[1]]}
	}
	sort.Slice(spans, func(i, j int) bool {
		return spans[i].lo < spans[j].lo || (spans[i].lo == spans[j].lo && spans[i].name < spans[j].name)
	})
	for i := 1; i < len(spans); i++ {
		if spans[i].lo < spans[i-1].hi {
			return nil, nil, fmt.Errorf("%w: tensors %q and %q overlap", ErrBadFile, spans[i-1].name, spans[i].name)
		}
	}
	return tensors, meta, nil
}

func f32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func f16Bytes(v []float32) []byte {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], f32ToF16(x))
	}
	return b
}

// tensorFloats decodes an F32 or F16 tensor into float32s.
func tensorFloats(t stTensor) []float32 {
	switch t.dtype {
	case "F32":
		out := make([]float32, len(t.data)/4)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.data[4*i:]))
		}
		return out
	case "F16":
		out := make([]float32, len(t.data)/2)
		for i := range out {
			out[i] = f16ToF32(binary.LittleEndian.Uint16(t.data[2*i:]))
		}
		return out
	}
	return nil
}

// f32ToF16 converts to IEEE half precision, rounding to nearest even.
func f32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23&0xff) - 127 + 15
	mant := b & 0x7fffff
	switch {
	case b&0x7fffffff == 0:
		return sign
	case int32(b>>23&0xff) == 0xff: // Inf or NaN
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp >= 0x1f:
		return sign | 0x7c00
	case exp <= 0:
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint32(14 - exp)
		half := uint32(1) << (shift - 1)
		r := mant >> shift
		rem := mant & (1<<shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(exp)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // may carry into the exponent, which is the correct rounding
	}
	return sign | uint16(r)
}

func f16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		f := float32(mant) / 1024 / 16384 // 2^-14 · mant/1024
		if sign != 0 {
			return -f
		}
		return f
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}
