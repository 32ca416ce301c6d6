package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"github.com/flashmemory/flashmemory/internal/sharedtest"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func f32bytes(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func sample() ([]Tensor, map[string]string) {
	return []Tensor{
			{Name: "w", DType: F32, Shape: []int{2, 3}, Data: f32bytes(1, 2, 3, 4, 5, 6)},
			{Name: "h", DType: BF16, Shape: []int{2}, Data: []byte{0x80, 0x3f, 0x00, 0xc0}}, // 1.0, -2.0
			{Name: "p", DType: I64, Shape: []int{1}, Data: []byte{7, 0, 0, 0, 0, 0, 0, 0}},
			{Name: "s", DType: F16, Shape: []int{}, Data: []byte{0x00, 0x3c}}, // scalar 1.0
			{Name: "e", DType: U8, Shape: []int{0, 5}, Data: []byte{}},
		}, map[string]string{
			"about": "test",
		}
}

func encode(t *testing.T, tensors []Tensor, md map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, tensors, md); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	tensors, md := sample()
	buf := encode(t, tensors, md)
	if hl := binary.LittleEndian.Uint64(buf); (8+hl)%8 != 0 {
		t.Errorf("data section not 8-aligned: header length %d", hl)
	}
	f, err := Parse(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Names(); strings.Join(got, ",") != "w,h,p,s,e" && strings.Join(got, ",") != "e,w,h,p,s" {
		t.Errorf("Names() = %v", got)
	}
	if got := f.Metadata()["about"]; got != "test" {
		t.Errorf("metadata about = %q", got)
	}
	for _, want := range tensors {
		got, err := f.Tensor(want.Name)
		if err != nil {
			t.Fatal(err)
		}
		if got.DType != want.DType || !bytes.Equal(got.Data, want.Data) || len(got.Shape) != len(want.Shape) {
			t.Errorf("tensor %s: got %+v want %+v", want.Name, got, want)
		}
	}
	w, _ := f.Tensor("w")
	if v, err := w.Float32s(); err != nil || v[5] != 6 {
		t.Errorf("w.Float32s() = %v, %v", v, err)
	}
	h, _ := f.Tensor("h")
	if v, err := h.Float32s(); err != nil || v[0] != 1 || v[1] != -2 {
		t.Errorf("h.Float32s() = %v, %v", v, err)
	}
	s, _ := f.Tensor("s")
	if v, err := s.Float32s(); err != nil || len(v) != 1 || v[0] != 1 {
		t.Errorf("s.Float32s() = %v, %v", v, err)
	}
	p, _ := f.Tensor("p")
	if v, err := p.Int64s(); err != nil || v[0] != 7 {
		t.Errorf("p.Int64s() = %v, %v", v, err)
	}
	if _, err := p.Float32s(); !errors.Is(err, ErrDType) {
		t.Errorf("I64 Float32s error = %v, want ErrDType", err)
	}
	if _, err := f.Tensor("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing tensor error = %v", err)
	}
}

func TestF16(t *testing.T) {
	tests := []struct {
		h    uint16
		want float32
	}{
		{0x3c00, 1}, {0xc000, -2}, {0x7bff, 65504}, {0x0001, float32(math.Ldexp(1, -24))},
		{0x03ff, float32(math.Ldexp(1023, -24))}, {0x0400, float32(math.Ldexp(1, -14))},
		{0x8000, float32(math.Copysign(0, -1))}, {0x7c00, float32(math.Inf(1))},
	}
	for _, tt := range tests {
		got := f16ToF32(tt.h)
		if math.Float32bits(got) != math.Float32bits(tt.want) {
			t.Errorf("f16ToF32(%#04x) = %v, want %v", tt.h, got, tt.want)
		}
	}
	if !math.IsNaN(float64(f16ToF32(0x7e00))) {
		t.Error("f16 NaN not NaN")
	}
}

// rawFile builds a file from a literal header and data section.
func rawFile(header string, data []byte) []byte {
	b := make([]byte, 8, 8+len(header)+len(data))
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

func TestParseErrors(t *testing.T) {
	eight := make([]byte, 8)
	tests := []struct {
		name string
		buf  []byte
		want error
		msg  string
	}{
		{"short", []byte{1, 2, 3}, ErrTruncated, "need at least 8"},
		{"huge header", binary.LittleEndian.AppendUint64(nil, MaxHeaderLen+1), ErrHeaderTooLarge, "exceeds limit"},
		{"header past end", append(binary.LittleEndian.AppendUint64(nil, 100), "{}"...), ErrTruncated, "only 2 bytes follow"},
		{"not object", rawFile(`[]`, nil), ErrBadHeader, "does not start"},
		{"bad json", rawFile(`{"a":`, nil), ErrBadHeader, ""},
		{"trailing", rawFile(`{} {}`, nil), ErrBadHeader, "trailing"},
		{"unknown dtype", rawFile(`{"a":{"dtype":"F7","shape":[2],"data_offsets":[0,8]}}`, eight), ErrUnknownDType, `"a"`},
		{"unknown field", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}`, eight), ErrBadHeader, `"a"`},
		{"missing shape", rawFile(`{"a":{"dtype":"F32","data_offsets":[0,8]}}`, eight), ErrBadHeader, "required"},
		{"negative dim", rawFile(`{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, eight), ErrBadShape, "dimension 0 is -2"},
		{"overflow", rawFile(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`, eight), ErrBadShape, "overflows"},
		{"size mismatch", rawFile(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, eight), ErrBadOffsets, "needs 12 bytes, data_offsets span 8"},
		{"past end", rawFile(`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, eight), ErrBadOffsets, "outside data section of 8 bytes"},
		{"reversed", rawFile(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}}`, eight), ErrBadOffsets, "outside"},
		{"three offsets", rawFile(`{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8,8]}}`, eight), ErrBadOffsets, "has 3 values"},
		{"overlap", rawFile(`{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}`, eight), ErrBadOffsets, "overlapping"},
		{"gap", rawFile(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}`, eight), ErrBadOffsets, "gap"},
		{"uncovered tail", rawFile(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`, eight), ErrBadOffsets, "cover 4 bytes, data section has 8"},
		{"duplicate", rawFile(`{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}`, eight), ErrBadHeader, "duplicate"},
		{"metadata not strings", rawFile(`{"__metadata__":{"a":1}}`, nil), ErrBadHeader, "__metadata__"},
		{"empty name", rawFile(`{"":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}`, nil), ErrBadHeader, "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.buf)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Parse error = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not mention %q", err, tt.msg)
			}
		})
	}
}

func TestParseAccepts(t *testing.T) {
	tests := []struct {
		name string
		buf  []byte
		n    int
	}{
		{"empty", rawFile(`{}`, nil), 0},
		{"padded", rawFile(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}   `, []byte{1, 2}), 1},
		{"metadata only", rawFile(`{"__metadata__":{"k":"v"}}`, nil), 0},
		{"zero-size tensors", rawFile(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, []byte{9}), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse(tt.buf)
			if err != nil {
				t.Fatal(err)
			}
			if len(f.Names()) != tt.n {
				t.Errorf("got %d tensors, want %d", len(f.Names()), tt.n)
			}
		})
	}
}

func TestWriteErrors(t *testing.T) {
	tests := []struct {
		name string
		t    Tensor
		want error
	}{
		{"size", Tensor{Name: "a", DType: F32, Shape: []int{3}, Data: make([]byte, 8)}, ErrBadTensor},
		{"dtype", Tensor{Name: "a", DType: "Q4", Shape: []int{3}, Data: make([]byte, 3)}, ErrUnknownDType},
		{"reserved", Tensor{Name: metadataKey, DType: U8, Shape: []int{0}}, ErrBadTensor},
		{"negative", Tensor{Name: "a", DType: U8, Shape: []int{-1}}, ErrBadShape},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Write(&bytes.Buffer{}, []Tensor{tt.t}, nil); !errors.Is(err, tt.want) {
				t.Errorf("Write error = %v, want %v", err, tt.want)
			}
		})
	}
	dup := []Tensor{{Name: "a", DType: U8, Shape: []int{0}}, {Name: "a", DType: U8, Shape: []int{0}}}
	if err := Write(&bytes.Buffer{}, dup, nil); !errors.Is(err, ErrBadTensor) {
		t.Errorf("duplicate names: %v", err)
	}
}

func TestOpen(t *testing.T) {
	tensors, md := sample()
	path := filepath.Join(t.TempDir(), "x.safetensors")
	if err := os.WriteFile(path, encode(t, tensors, md), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := f.Tensor("w")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := w.Float32s(); v[0] != 1 {
		t.Errorf("w[0] = %v", v[0])
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	trunc := filepath.Join(t.TempDir(), "t.safetensors")
	full := encode(t, tensors, md)
	if err := os.WriteFile(trunc, full[:len(full)-3], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(trunc); !errors.Is(err, ErrBadOffsets) || !strings.Contains(err.Error(), trunc) {
		t.Errorf("truncated file error = %v", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file error = %v", err)
	}
}

// TestGoldenFile checks the reader against the file written by the Python library.
func TestGoldenFile(t *testing.T) {
	path := goldenPath(t)
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := f.Metadata()["n_heads"]; got != "8" {
		t.Errorf("metadata n_heads = %q", got)
	}
	k, err := f.Tensor("l10.compressed_k")
	if err != nil {
		t.Fatal(err)
	}
	if k.DType != U8 || len(k.Shape) != 2 || k.Shape[0] != 1000 || k.Shape[1] != 132 {
		t.Errorf("compressed_k: %s %v", k.DType, k.Shape)
	}
	p, err := f.Tensor("positions")
	if err != nil {
		t.Fatal(err)
	}
	pos, err := p.Int64s()
	if err != nil || len(pos) != 4 || pos[3] != 131000 {
		t.Errorf("positions = %v, %v", pos, err)
	}
	if len(f.Names()) != 23 {
		t.Errorf("%d tensors, want 23", len(f.Names()))
	}
}

func goldenPath(t testing.TB) string {
	t.Helper()
	return sharedtest.Golden(t)
}

func FuzzParse(f *testing.F) {
	tensors, md := sample()
	var buf bytes.Buffer
	if err := Write(&buf, tensors, md); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add(rawFile(`{}`, nil))
	f.Add(rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 8)))
	f.Add(rawFile(`{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}`, make([]byte, 8)))
	f.Add(rawFile(`{"__metadata__":{"k":"v"},"x":{"dtype":"BF16","shape":[1,1],"data_offsets":[0,2]}}`, []byte{1, 2}))
	f.Add(binary.LittleEndian.AppendUint64(nil, math.MaxUint64))
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Parse(b)
		if err != nil {
			return
		}
		// Every accepted tensor must be fully inside the input and consistent.
		for _, name := range file.Names() {
			tt, err := file.Tensor(name)
			if err != nil {
				t.Fatalf("listed tensor %q not found: %v", name, err)
			}
			if tt.NumElements()*tt.DType.Size() != len(tt.Data) {
				t.Fatalf("tensor %q: %d elements of %d bytes but %d data bytes", name, tt.NumElements(), tt.DType.Size(), len(tt.Data))
			}
			if len(tt.Data) > len(b) {
				t.Fatalf("tensor %q larger than the input", name)
			}
		}
	})
}
