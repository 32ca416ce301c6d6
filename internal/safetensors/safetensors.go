package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"slices"
	"sort"
	"strings"
)

// MaxHeaderLen bounds the JSON header (100 MB, as the reference implementation
// does) so a corrupt length field cannot make the reader allocate without limit.
const MaxHeaderLen = 100 << 20

// metadataKey is the reserved header entry holding free-form string metadata.
const metadataKey = "__metadata__"

var (
	// ErrTruncated reports input shorter than its own header says it is.
	ErrTruncated = errors.New("safetensors: truncated file")
	// ErrHeaderTooLarge reports a header length above MaxHeaderLen.
	ErrHeaderTooLarge = errors.New("safetensors: header too large")
	// ErrBadHeader reports a header that is not the expected JSON structure.
	ErrBadHeader = errors.New("safetensors: malformed header")
	// ErrUnknownDType reports a dtype string this package does not know.
	ErrUnknownDType = errors.New("safetensors: unknown dtype")
	// ErrBadOffsets reports data_offsets outside the data section, overlapping,
	// leaving gaps, or not matching shape × dtype size.
	ErrBadOffsets = errors.New("safetensors: bad data offsets")
	// ErrBadShape reports a negative dimension or a shape whose size overflows.
	ErrBadShape = errors.New("safetensors: bad shape")
	// ErrNotFound reports a tensor name that is not in the file.
	ErrNotFound = errors.New("safetensors: tensor not found")
	// ErrDType reports a conversion asked of a tensor with an unsupported dtype.
	ErrDType = errors.New("safetensors: unsupported dtype for conversion")
	// ErrBadTensor reports a tensor given to Write that is inconsistent.
	ErrBadTensor = errors.New("safetensors: invalid tensor for writing")
)

// DType is a safetensors element type, spelled as in the header ("F32", "BF16", ...).
type DType string

// Element types with a whole number of bytes per element.
const (
	Bool   DType = "BOOL"
	U8     DType = "U8"
	I8     DType = "I8"
	F8E4M3 DType = "F8_E4M3"
	F8E5M2 DType = "F8_E5M2"
	F8E8M0 DType = "F8_E8M0"
	I16    DType = "I16"
	U16    DType = "U16"
	F16    DType = "F16"
	BF16   DType = "BF16"
	I32    DType = "I32"
	U32    DType = "U32"
	F32    DType = "F32"
	F64    DType = "F64"
	I64    DType = "I64"
	U64    DType = "U64"
	C64    DType = "C64"
)

var dtypeSizes = map[DType]int{
	Bool: 1, U8: 1, I8: 1, F8E4M3: 1, F8E5M2: 1, F8E8M0: 1,
	I16: 2, U16: 2, F16: 2, BF16: 2,
	I32: 4, U32: 4, F32: 4,
	F64: 8, I64: 8, U64: 8, C64: 8,
}

// Size returns the bytes per element, or 0 for an unknown dtype.
func (d DType) Size() int { return dtypeSizes[d] }

// Tensor is one named tensor. Data is little-endian and, for a File from Open,
// aliases the mapped file: it is valid until Close and must not be modified.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// NumElements returns the product of Shape (1 for a scalar).
func (t Tensor) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// File is a parsed safetensors file. Its methods are safe for concurrent use.
type File struct {
	tensors  map[string]Tensor
	names    []string // in data-offset order
	metadata map[string]string
	closer   func() error
}

type headerEntry struct {
	DType       string   `json:"dtype"`
	Shape       []int64  `json:"shape"`
	DataOffsets []uint64 `json:"data_offsets"`
}

// Parse parses a complete safetensors file held in memory. The returned tensors
// alias buf.
func Parse(buf []byte) (*File, error) {
	if len(buf) < 8 {
		return nil, fmt.Errorf("%w: %d bytes, need at least 8 for the header length", ErrTruncated, len(buf))
	}
	n := binary.LittleEndian.Uint64(buf[:8])
	if n > MaxHeaderLen {
		return nil, fmt.Errorf("%w: header length %d exceeds limit %d", ErrHeaderTooLarge, n, MaxHeaderLen)
	}
	if n > uint64(len(buf)-8) {
		return nil, fmt.Errorf("%w: header length %d but only %d bytes follow", ErrTruncated, n, len(buf)-8)
	}
	hdr := buf[8 : 8+n]
	data := buf[8+n:]
	return parseHeader(hdr, data)
}

func parseHeader(hdr, data []byte) (*File, error) {
	trimmed := bytes.TrimRight(hdr, " ")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("%w: header does not start with '{'", ErrBadHeader)
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil { // the opening brace
		return nil, fmt.Errorf("%w: %v", ErrBadHeader, err)
	}
	f := &File{tensors: make(map[string]Tensor), metadata: map[string]string{}}
	type span struct {
		name       string
		begin, end uint64
	}
	var spans []span
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadHeader, err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("%w: expected a tensor name, got %v", ErrBadHeader, tok)
		}
		if seen[name] {
			return nil, fmt.Errorf("%w: duplicate entry %q", ErrBadHeader, name)
		}
		seen[name] = true
		if name == metadataKey {
			var md map[string]string
			if err := dec.Decode(&md); err != nil {
				return nil, fmt.Errorf("%w: %s must map strings to strings: %v", ErrBadHeader, metadataKey, err)
			}
			if md != nil {
				f.metadata = md
			}
			continue
		}
		if name == "" {
			return nil, fmt.Errorf("%w: empty tensor name", ErrBadHeader)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %v", ErrBadHeader, name, err)
		}
		var e headerEntry
		ed := json.NewDecoder(bytes.NewReader(raw))
		ed.DisallowUnknownFields()
		if err := ed.Decode(&e); err != nil {
			return nil, fmt.Errorf("%w: tensor %q: %v", ErrBadHeader, name, err)
		}
		if e.DType == "" || e.Shape == nil || e.DataOffsets == nil {
			return nil, fmt.Errorf("%w: tensor %q: dtype, shape and data_offsets are all required", ErrBadHeader, name)
		}
		dt := DType(e.DType)
		size := dt.Size()
		if size == 0 {
			return nil, fmt.Errorf("%w: tensor %q: %q", ErrUnknownDType, name, e.DType)
		}
		if len(e.DataOffsets) != 2 {
			return nil, fmt.Errorf("%w: tensor %q: data_offsets has %d values, want 2", ErrBadOffsets, name, len(e.DataOffsets))
		}
		begin, end := e.DataOffsets[0], e.DataOffsets[1]
		if begin > end || end > uint64(len(data)) {
			return nil, fmt.Errorf("%w: tensor %q: [%d, %d) outside data section of %d bytes", ErrBadOffsets, name, begin, end, len(data))
		}
		shape := make([]int, len(e.Shape))
		nbytes := uint64(size)
		for i, d := range e.Shape {
			if d < 0 {
				return nil, fmt.Errorf("%w: tensor %q: dimension %d is %d", ErrBadShape, name, i, d)
			}
			hi, lo := bits.Mul64(nbytes, uint64(d))
			if hi != 0 || lo > math.MaxInt {
				return nil, fmt.Errorf("%w: tensor %q: shape %v overflows", ErrBadShape, name, e.Shape)
			}
			nbytes = lo
			shape[i] = int(d)
		}
		if nbytes != end-begin {
			return nil, fmt.Errorf("%w: tensor %q: shape %v of %s needs %d bytes, data_offsets span %d", ErrBadOffsets, name, e.Shape, dt, nbytes, end-begin)
		}
		f.tensors[name] = Tensor{Name: name, DType: dt, Shape: shape, Data: data[begin:end:end]}
		spans = append(spans, span{name, begin, end})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, fmt.Errorf("%w: %v", ErrBadHeader, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the header object", ErrBadHeader)
	}
	// The reference implementation requires the spans to tile the data section
	// exactly; a gap or overlap means a corrupt or hand-edited file.
	sort.Slice(spans, func(i, j int) bool {
		if spans[i].begin != spans[j].begin {
			return spans[i].begin < spans[j].begin
		}
		return spans[i].end < spans[j].end
	})
	var pos uint64
	for _, s := range spans {
		if s.begin != pos {
			if s.begin < pos {
				return nil, fmt.Errorf("%w: tensor %q starts at %d, overlapping the previous tensor ending at %d", ErrBadOffsets, s.name, s.begin, pos)
			}
			return nil, fmt.Errorf("%w: tensor %q starts at %d, leaving a gap after offset %d", ErrBadOffsets, s.name, s.begin, pos)
		}
		pos = s.end
		f.names = append(f.names, s.name)
	}
	if pos != uint64(len(data)) {
		return nil, fmt.Errorf("%w: tensors cover %d bytes, data section has %d", ErrBadOffsets, pos, len(data))
	}
	return f, nil
}

// Close releases the file mapping of a File from Open; tensors obtained from it
// must not be used afterwards. It is a no-op for a File from Parse.
func (f *File) Close() error {
	if f.closer == nil {
		return nil
	}
	c := f.closer
	f.closer = nil
	return c()
}

// Names returns the tensor names in data-offset order.
func (f *File) Names() []string { return slices.Clone(f.names) }

// Metadata returns a copy of the "__metadata__" string map (empty if absent).
func (f *File) Metadata() map[string]string {
	m := make(map[string]string, len(f.metadata))
	for k, v := range f.metadata {
		m[k] = v
	}
	return m
}

// Tensor returns the named tensor.
func (f *File) Tensor(name string) (Tensor, error) {
	t, ok := f.tensors[name]
	if !ok {
		return Tensor{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	t.Shape = slices.Clone(t.Shape)
	return t, nil
}

// Float32s converts F32, BF16 or F16 data to a new []float32.
func (t Tensor) Float32s() ([]float32, error) {
	n := t.NumElements()
	out := make([]float32, n)
	switch t.DType {
	case F32:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
		}
	case BF16:
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(t.Data[2*i:])) << 16)
		}
	case F16:
		for i := range out {
			out[i] = f16ToF32(binary.LittleEndian.Uint16(t.Data[2*i:]))
		}
	default:
		return nil, fmt.Errorf("%w: tensor %q is %s, want F32, BF16 or F16", ErrDType, t.Name, t.DType)
	}
	return out, nil
}

// Int64s converts I64 or I32 data to a new []int64.
func (t Tensor) Int64s() ([]int64, error) {
	n := t.NumElements()
	out := make([]int64, n)
	switch t.DType {
	case I64:
		for i := range out {
			out[i] = int64(binary.LittleEndian.Uint64(t.Data[8*i:]))
		}
	case I32:
		for i := range out {
			out[i] = int64(int32(binary.LittleEndian.Uint32(t.Data[4*i:])))
		}
	default:
		return nil, fmt.Errorf("%w: tensor %q is %s, want I64 or I32", ErrDType, t.Name, t.DType)
	}
	return out, nil
}

// f16ToF32 widens an IEEE half; exact, so no rounding question arises.
func f16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0:
		return math.Float32frombits(sign)
	default:
		// Subnormal half: mant · 2^-24, exact in float32.
		v := float32(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			v = -v
		}
		return v
	}
}

// Write writes tensors (in the given order) and metadata as a safetensors file.
// The header is padded with spaces to a multiple of 8 bytes so that the data
// section is aligned, as the reference writer does.
func Write(w io.Writer, tensors []Tensor, metadata map[string]string) error {
	var sb strings.Builder
	sb.WriteByte('{')
	first := true
	comma := func() {
		if !first {
			sb.WriteByte(',')
		}
		first = false
	}
	if len(metadata) > 0 {
		md, err := json.Marshal(metadata)
		if err != nil {
			return fmt.Errorf("%w: metadata: %v", ErrBadTensor, err)
		}
		comma()
		sb.WriteString(`"` + metadataKey + `":`)
		sb.Write(md)
	}
	seen := make(map[string]bool, len(tensors))
	var off uint64
	for _, t := range tensors {
		if t.Name == "" || t.Name == metadataKey || seen[t.Name] {
			return fmt.Errorf("%w: name %q is empty, reserved or repeated", ErrBadTensor, t.Name)
		}
		seen[t.Name] = true
		size := t.DType.Size()
		if size == 0 {
			return fmt.Errorf("%w: tensor %q: %q", ErrUnknownDType, t.Name, t.DType)
		}
		want := size
		for _, d := range t.Shape {
			if d < 0 {
				return fmt.Errorf("%w: tensor %q: shape %v", ErrBadShape, t.Name, t.Shape)
			}
			want *= d
		}
		if want != len(t.Data) {
			return fmt.Errorf("%w: tensor %q: shape %v of %s needs %d bytes, got %d", ErrBadTensor, t.Name, t.Shape, t.DType, want, len(t.Data))
		}
		name, _ := json.Marshal(t.Name)
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		sh, _ := json.Marshal(shape)
		comma()
		fmt.Fprintf(&sb, `%s:{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}`, name, t.DType, sh, off, off+uint64(len(t.Data)))
		off += uint64(len(t.Data))
	}
	sb.WriteByte('}')
	for (8+sb.Len())%8 != 0 {
		sb.WriteByte(' ')
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(sb.Len()))
	if _, err := w.Write(lenBuf[:]); err != nil {
		return err
	}
	if _, err := io.WriteString(w, sb.String()); err != nil {
		return err
	}
	for _, t := range tensors {
		if _, err := w.Write(t.Data); err != nil {
			return err
		}
	}
	return nil
}
