package proto

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

// OPEN's page-major flag and the replies' strides travel as optional trailing fields: set,
// they round-trip; unset, the bytes are exactly the format without them; malformed ones
// are refused.
func TestPageMajorWire(t *testing.T) {
	l := DeepSeekV4Layout(8)
	plain, err := (&Open{Model: "m", Device: DeviceAny, Layout: l}).AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	l.PageMajor = true
	open := &Open{Model: "m", Device: DeviceAny, Layout: l}
	b, err := open.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != len(plain)+4 || binary.LittleEndian.Uint32(b[len(plain):]) != OpenFlagPageMajor {
		t.Fatalf("page-major OPEN is %d bytes, plain %d: want one trailing flags word", len(b), len(plain))
	}
	var got Open
	if err := got.Decode(b); err != nil || !reflect.DeepEqual(&got, open) {
		t.Fatalf("decode: %v, %+v", err, got)
	}
	var old Open
	if err := old.Decode(plain); err != nil || old.Layout.PageMajor {
		t.Fatalf("plain OPEN: %v, page-major %v", err, old.Layout.PageMajor)
	}
	bad := binary.LittleEndian.AppendUint32(append([]byte(nil), plain...), 2)
	if err := new(Open).Decode(bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("unknown flag: %v, want ErrMalformed", err)
	}

	const slots, page = 8, 786432 // 21 × 37,440 B rounded up to 256
	desc := RegionDesc{Size: slots * page, Slots: slots, Kind: RegionMemfd, Device: NoDevice}
	for i := range 21 {
		desc.Layers = append(desc.Layers, RegionLayer{Offset: uint64(i * 37440), RowBytes: 37440})
		desc.Strides = append(desc.Strides, page)
	}
	for _, m := range []interface {
		Message
		region() *RegionDesc
	}{&OpenReply{Session: 3, Region: Region{RegionDesc: desc}}, &ResumeReply{Session: 3, Model: "m", Layout: l, Region: Region{RegionDesc: desc}}} {
		b, err := m.AppendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		back := reflect.New(reflect.TypeOf(m).Elem()).Interface().(interface {
			Message
			region() *RegionDesc
		})
		if err := back.Decode(b); err != nil {
			t.Fatal(err)
		}
		if r := back.region(); !reflect.DeepEqual(r.Strides, desc.Strides) || r.Stride(20) != page {
			t.Fatalf("%T strides %v", m, r.Strides)
		}
		mem := make([]byte, desc.Size)
		if row := back.region().Row(mem, 20, slots-1); len(row) != 37440 || &row[0] != &mem[(slots-1)*page+20*37440] {
			t.Fatalf("%T: Row of the last slot of layer 20 misplaced", m)
		}
		// A stride list of the wrong length, or one that leaves the region, is refused.
		short := append(b[:len(b)-4-21*8], binary.LittleEndian.AppendUint32(nil, 20)...)
		for range 20 {
			short = binary.LittleEndian.AppendUint64(short, page)
		}
		if err := back.Decode(short); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%T with 20 strides: %v", m, err)
		}
		big := append([]byte(nil), b...)
		binary.LittleEndian.PutUint64(big[len(big)-8:], 2*page)
		if err := back.Decode(big); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%T with a stride past the region: %v", m, err)
		}
	}
	// Per-layer regions encode no strides: the reply is the format before them.
	pl := desc
	pl.Strides = nil
	a, _ := (&OpenReply{Session: 1, Region: Region{RegionDesc: pl}}).AppendBinary(nil)
	var r OpenReply
	if err := r.Decode(a); err != nil || r.Region.Strides != nil || r.Region.Stride(3) != 37440 {
		t.Fatalf("per-layer reply: %v, strides %v", err, r.Region.Strides)
	}
}

func (m *OpenReply) region() *RegionDesc   { return &m.Region.RegionDesc }
func (m *ResumeReply) region() *RegionDesc { return &m.Region.RegionDesc }
