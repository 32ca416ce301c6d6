package proto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"
)

type sample struct {
	name  string
	op    Op
	reply bool
	msg   Message
}

func testLayout() Layout {
	l := DeepSeekV4Layout(256)
	l.Layers = l.Layers[:3]
	l.Layers = append(l.Layers, LayerLayout{RowBytes: 64 * 132, Segments: []uint32{132}})
	return l
}

// samples returns one fully populated message of every body type, both
// directions. Fuzz seeds and the docs' hex examples come from here too.
func samples() []sample {
	lay := testLayout()
	pol := Policy{FirstKeep: 128, LastKeep: 2048, KMax: 96, Lookahead: 32, KMaxRatio: 0.1, FallbackRatio: 0.6}
	region := Region{RegionDesc: RegionDesc{Size: 3 * 256 * 37440, Slots: 256, Kind: RegionCUDA, Device: 1, Layers: []RegionLayer{
		{0, 37440}, {256 * 37440, 37440}, {2 * 256 * 37440, 37440}}}}
	hostRegion := region
	hostRegion.Kind, hostRegion.Device = RegionMemfd, NoDevice
	return []sample{
		{"error", 0, true, &ErrorBody{Code: CodeUnknownSession, Msg: "session 42 not found"}},
		{"empty", OpStatus, false, &Empty{}},
		{"ping", OpPing, false, &Ping{Data: []byte("ping!")}},
		{"hello", OpHello, false, &Hello{MinVersion: 1, MaxVersion: 1, ClientName: "decoder-0"}},
		{"hello reply", OpHello, true, &HelloReply{Version: 1, Limits: Limits{MaxBody: 16 << 20, MaxSessions: 64, MaxCycleEntries: 256, StagingSize: 64 << 20},
			InstanceID: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, Server: "flashmemd 0.1"}},
		{"open", OpOpen, false, &Open{Name: "chat-17", Model: "lsa-v4", Persist: true, Device: DeviceAny, Layout: lay, Policy: pol}},
		{"open reply", OpOpen, true, &OpenReply{Session: 0x1122334455667788, Region: region}},
		{"resume", OpResume, false, &Resume{Name: "chat-17"}},
		{"resume reply", OpResume, true, &ResumeReply{Session: 7, Chunks: 8192, Persist: true, Model: "lsa-v4", Layout: lay, Policy: pol, Region: hostRegion}},
		{"close", OpClose, false, &Close{Session: 7, Delete: true}},
		{"persist", OpPersist, false, &Persist{Session: 7}},
		{"append staged", OpAppend, false, &Append{Session: 7, FirstChunk: 128, Count: 2, Offset: 4096, Length: 2 * lay.ChunkBytes(), Keys: bytes.Repeat([]byte{0xab}, 2*3*132)}},
		{"append inline", OpAppend, false, &Append{Session: 7, FirstChunk: 0, Count: 1, Inline: true, Length: 5, Payload: []byte("hello"), Keys: []byte("k")}},
		{"commit", OpCommit, false, &Commit{Session: 7, FirstChunk: 130, Count: 16, Keys: bytes.Repeat([]byte{7}, 16*3*132)}},
		{"chunks reply", OpAppend, true, &ChunksReply{Chunks: 146}},
		{"cycle", OpCycle, false, &Cycle{Entries: []CycleEntry{
			{Session: 7, Step: 640, Position: 131072, Queries: [][]byte{[]byte("q0"), []byte("q1"), {}}},
			{Session: 9, Step: 64, Position: 70001, Queries: [][]byte{bytes.Repeat([]byte{1}, 16)}},
		}}},
		{"cycle reply", OpCycle, true, &CycleReply{Results: []CycleResult{
			{Lease: 31, Cycle: 10, Pages: []PageSlot{{0, 3}, {5, 0}, {9, 1}}, Tail: []PageSlot{{10, 2}},
				Counters: CycleCounters{Chunks: 640, TotalPages: 10, ResidentPages: 3, ForcedPages: 2, RecalledPages: 1,
					Fallback: true, AboveFraction: 0.125, WaitMicros: 17, ScoreMicros: 250}},
			{Err: &Error{Code: CodeNoChunks, Msg: "session 9 has no chunks"}},
			{Lease: 32, Cycle: 1},
			{Lease: 33, Cycle: 2, Pages: []PageSlot{{0, 1}}, Damaged: []DamagedPage{
				{Page: 4, Err: &Error{Code: CodeIntegrity, Msg: "page 4: body checksum"}}, {Page: 7, Err: &Error{Code: CodeIntegrity}}}},
		}}},
		{"release", OpRelease, false, &Release{Leases: []uint64{31, 32, 1 << 40}}},
		{"admin target", OpInspect, false, &AdminTarget{Name: "chat-17"}},
		{"status reply", OpStatus, true, &StatusReply{Instance: "abc", Server: "flashmemd", Protocol: 1, UptimeSeconds: 1.5, Connections: 2, Sessions: 3, Leases: 4,
			Tiers: []TierStatus{{Name: "host", UsedBytes: 10, CapacityBytes: 20, Pages: 1, Hits: 5, Misses: 1}}, Counters: map[string]float64{"cycle_p50_us": 40}}},
		{"sessions reply", OpSessions, true, &SessionsReply{Sessions: []SessionInfo{{ID: 7, Name: "chat-17", Model: "lsa-v4", Persist: true, Chunks: 9}}}},
		{"inspect reply", OpInspect, true, &InspectReply{Session: SessionInfo{ID: 7}, Layout: lay, Policy: pol, Leases: 1, TierPages: map[string]uint64{"ssd": 3}, Resident: []uint32{0, 5}}},
		{"evict reply", OpEvict, true, &EvictReply{Sessions: []uint64{7}, Bytes: 1 << 20}},
		{"models reply", OpModels, true, &ModelsReply{DefaultModel: "demo", Models: []ModelInfo{{Name: "demo", Kind: "lsa", QueryBytes: 1024, KeyBytes: 132, TargetLayers: 3, Layers: []int{0, 1, 2}, Default: true}}, Limits: ServerLimits{MaxConns: 256, LeaseTimeout: 300}}},
		{"models request", OpModels, false, &Empty{}},
		{"persisted sessions reply", OpSessions, true, &SessionsReply{Sessions: []SessionInfo{{ID: 8, Name: "demo", State: "on-ssd",
			LastUsed: time.Date(2026, 12, 2, 17, 0, 0, 0, time.UTC), TierPages: map[string]uint64{"ssd": 130}}}}},
		{"delete reply", OpDelete, true, &EvictReply{Sessions: []uint64{8}, OnSSDOnly: true}},
		{"verify reply", OpVerify, true, &VerifyReply{Session: 8, Name: "demo", Pages: 130, Verified: 129, InMemory: 3, Bad: 1,
			Damage: []PageDamage{{Page: 17, Reason: "checksum"}}, Bytes: 1 << 24}},
	}
}

func isJSON(m Message) bool {
	switch m.(type) {
	case *AdminTarget, *StatusReply, *SessionsReply, *InspectReply, *EvictReply, *ModelsReply, *VerifyReply:
		return true
	}
	return false
}

func newLike(m Message) Message { return reflect.New(reflect.TypeOf(m).Elem()).Interface().(Message) }

func TestMessageRoundTrip(t *testing.T) {
	for _, s := range samples() {
		t.Run(s.name, func(t *testing.T) {
			b, err := s.msg.AppendBinary([]byte("prefix"))
			if err != nil {
				t.Fatal(err)
			}
			if string(b[:6]) != "prefix" {
				t.Fatal("AppendBinary overwrote the destination")
			}
			body := b[6:]
			got := newLike(s.msg)
			if err := got.Decode(body); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normalize(got), normalize(s.msg)) {
				t.Fatalf("round trip:\n got %#v\nwant %#v", got, s.msg)
			}
			if isJSON(s.msg) {
				return
			}
			// Binary encodings are canonical: re-encoding gives the bytes back.
			again, err := got.AppendBinary(nil)
			if err != nil || !bytes.Equal(again, body) {
				t.Fatalf("re-encoding differs (%v)", err)
			}
			if _, ok := s.msg.(*Ping); ok {
				return // any byte string is a valid PING body
			}
			for n := range len(body) {
				if err := newLike(s.msg).Decode(body[:n]); err == nil {
					t.Fatalf("prefix of %d/%d bytes decoded", n, len(body))
				} else if !errors.Is(err, ErrMalformed) {
					t.Fatalf("prefix %d: error %v does not wrap ErrMalformed", n, err)
				}
			}
			if err := newLike(s.msg).Decode(append(bytes.Clone(body), 0)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("trailing byte: %v", err)
			}
		})
	}
}

// normalize maps nil and empty slices to the same value for comparison:
// decoders return empty slices for zero counts.
func normalize(m Message) Message {
	switch v := m.(type) {
	case *Cycle:
		c := *v
		c.Entries = append([]CycleEntry(nil), v.Entries...)
		for i := range c.Entries {
			qs := make([][]byte, len(c.Entries[i].Queries))
			for j, q := range c.Entries[i].Queries {
				qs[j] = append([]byte{}, q...)
			}
			c.Entries[i].Queries = qs
		}
		return &c
	case *CycleReply:
		c := *v
		c.Results = append([]CycleResult(nil), v.Results...)
		for i := range c.Results {
			if len(c.Results[i].Pages) == 0 {
				c.Results[i].Pages = nil
			}
			if len(c.Results[i].Tail) == 0 {
				c.Results[i].Tail = nil
			}
		}
		return &c
	case *Ping:
		if len(v.Data) == 0 {
			return &Ping{}
		}
	case *Append:
		c := *v
		if len(c.Payload) == 0 {
			c.Payload = nil
		}
		return &c
	}
	return m
}

func TestEncodeRejects(t *testing.T) {
	long := strings.Repeat("x", MaxNameLen+1)
	tests := []struct {
		name string
		msg  Message
	}{
		{"long client name", &Hello{ClientName: long}},
		{"long session name", &Open{Name: long}},
		{"bad utf8 model", &Open{Model: "\xff"}},
		{"payload without inline", &Append{Payload: []byte("x")}},
		{"too many cycle entries", &Cycle{Entries: make([]CycleEntry, MaxCycleEntries+1)}},
		{"too many queries", &Cycle{Entries: []CycleEntry{{Queries: make([][]byte, MaxTargetLayers+1)}}}},
		{"too many leases", &Release{Leases: make([]uint64, MaxLeases+1)}},
		{"too many layers", &Open{Layout: Layout{Layers: make([]LayerLayout, MaxLayers+1)}}},
		{"too many segments", &Open{Layout: Layout{Layers: []LayerLayout{{Segments: make([]uint32, MaxSegments+1)}}}}},
		{"zero region descriptor (memfd on device 0)", &OpenReply{}},
		{"cuda region without device", &OpenReply{Region: Region{RegionDesc: RegionDesc{Kind: RegionCUDA, Device: NoDevice}}}},
		{"unknown region kind", &ResumeReply{Region: Region{RegionDesc: RegionDesc{Kind: 7, Device: 0}}}},
	}
	for _, tt := range tests {
		if b, err := tt.msg.AppendBinary([]byte{1}); !errors.Is(err, ErrMalformed) || len(b) != 1 {
			t.Errorf("%s: err %v, %d bytes", tt.name, err, len(b))
		}
	}
	// Error messages are clipped rather than refused: an error must always
	// be sendable.
	b, err := (&ErrorBody{Code: CodeInternal, Msg: strings.Repeat("é", MaxErrorMsg)}).AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	var eb ErrorBody
	if err := eb.Decode(b); err != nil || len(eb.Msg) > MaxErrorMsg {
		t.Fatalf("clipped message: %v, %d bytes", err, len(eb.Msg))
	}
}

func TestDecodeRejects(t *testing.T) {
	u32 := func(vs ...uint32) []byte {
		var b []byte
		for _, v := range vs {
			b = binary.LittleEndian.AppendUint32(b, v)
		}
		return b
	}
	inline, _ := (&Append{Session: 1, Inline: true, Payload: []byte("abc")}).AppendBinary(nil)
	inlineOff := bytes.Clone(inline)
	binary.LittleEndian.PutUint64(inlineOff[24:], 5) // staging offset with inline
	inlineLen := bytes.Clone(inline)
	binary.LittleEndian.PutUint64(inlineLen[32:], 4) // length disagrees with bytes
	badFlags := bytes.Clone(inline)
	badFlags[20] = 2
	closeBool, _ := (&Close{Session: 1}).AppendBinary(nil)
	closeBool[8] = 2
	region, _ := (&OpenReply{Session: 1, Region: Region{RegionDesc: RegionDesc{Size: 100, Slots: 10, Device: NoDevice, Layers: []RegionLayer{{Offset: 0, RowBytes: 11}}}}}).AppendBinary(nil)
	region2, _ := (&OpenReply{Session: 1, Region: Region{RegionDesc: RegionDesc{Size: 100, Slots: 1, Device: NoDevice, Layers: []RegionLayer{{Offset: math.MaxUint64, RowBytes: 1}}}}}).AppendBinary(nil)
	// kind at byte 20 of an OPEN reply, device at 24 (session u64, size u64, slots u32).
	goodRegion, err := (&OpenReply{Session: 1, Region: Region{RegionDesc: RegionDesc{Size: 100, Slots: 1, Device: NoDevice, Layers: []RegionLayer{{Offset: 0, RowBytes: 10}}}}}).AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&OpenReply{}).Decode(goodRegion); err != nil {
		t.Fatalf("valid region refused: %v", err)
	}
	badKind := bytes.Clone(goodRegion)
	binary.LittleEndian.PutUint32(badKind[20:], 2)
	memfdOnDevice := bytes.Clone(goodRegion)
	binary.LittleEndian.PutUint32(memfdOnDevice[24:], 0)
	cudaNoDevice := bytes.Clone(goodRegion)
	binary.LittleEndian.PutUint32(cudaNoDevice[20:], uint32(RegionCUDA))
	tests := []struct {
		name string
		msg  Message
		body []byte
	}{
		{"huge cycle count", &Cycle{}, u32(0xffffffff)},
		{"cycle count past body", &Cycle{}, u32(2, 0, 0, 0, 0, 0, 0, 0)},
		{"huge query count", &Cycle{}, append(u32(1, 0, 0, 0, 0, 0, 0), u32(1000)...)},
		{"huge release count", &Release{}, u32(MaxLeases + 1)},
		{"release count past body", &Release{}, u32(3, 0, 0)},
		{"huge page table", &CycleReply{}, append(append(u32(1, 0), make([]byte, 72)...), u32(0x7fffffff)...)},
		{"zero error code", &ErrorBody{}, u32(0, 0)},
		{"hello min > max", &Hello{}, []byte{2, 0, 1, 0, 0, 0}},
		{"bad utf8 name", &Resume{}, []byte{1, 0, 0xff}},
		{"empty resume name", &Resume{}, []byte{0, 0}},
		{"inline with offset", &Append{}, inlineOff},
		{"inline length mismatch", &Append{}, inlineLen},
		{"unknown append flag", &Append{}, badFlags},
		{"bool not 0/1", &Close{}, closeBool},
		{"region layer past size", &OpenReply{}, region},
		{"region offset overflow", &OpenReply{}, region2},
		{"unknown region kind", &OpenReply{}, badKind},
		{"host region on a device", &OpenReply{}, memfdOnDevice},
		{"cuda region without device", &OpenReply{}, cudaNoDevice},
		{"empty body not empty", &Empty{}, []byte{0}},
		{"admin target both", &AdminTarget{}, []byte(`{"session":1,"name":"x"}`)},
		{"admin target none", &AdminTarget{}, []byte(`{}`)},
		{"json garbage", &StatusReply{}, []byte(`{"instance":`)},
	}
	for _, tt := range tests {
		if err := tt.msg.Decode(tt.body); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", tt.name, err)
		}
	}
}

// TestHostileCountsDoNotAllocate: a body announcing billions of elements
// must be refused before anything proportional to the count is allocated.
func TestHostileCountsDoNotAllocate(t *testing.T) {
	ff := []byte{0xff, 0xff, 0xff, 0x7f}
	bodies := map[string]struct {
		m Message
		b []byte
	}{
		"cycle":         {&Cycle{}, ff},
		"cycle reply":   {&CycleReply{}, ff},
		"release":       {&Release{}, ff},
		"open layers":   {&Open{}, append(append(make([]byte, 4+4+8+32+20), ff...), make([]byte, 64)...)},
		"region layers": {&OpenReply{}, append(append(make([]byte, 8+8+4+4), 0xff, 0xff, 0xff, 0xff), ff...)},
		"blob":          {&Commit{}, append(make([]byte, 24), ff...)},
	}
	for name, tc := range bodies {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		err := tc.m.Decode(tc.b)
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Errorf("%s: hostile count accepted", name)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 16<<10 {
			t.Errorf("%s: allocated %d bytes", name, d)
		}
	}
}

func TestLayout(t *testing.T) {
	ds := DeepSeekV4Layout(512)
	if err := ds.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := ds.PageBytes(); got != 21*37440 {
		t.Fatalf("page bytes %d", got)
	}
	if got := ds.ChunkBytes(); got != 21*584 {
		t.Fatalf("chunk bytes %d", got)
	}
	if n, _ := ds.KeysBytes(10); n != 10*3*132 {
		t.Fatalf("keys bytes %d", n)
	}
	// Segment 1 (scales) of chunk 3 in the row: after 64 × 576 data bytes.
	if got := ds.RowOffset(0, 1, 3); got != 64*576+3*8 {
		t.Fatalf("row offset %d", got)
	}
	// Payload of 10 chunks: layer 2, segment 1, chunk 4.
	if got := ds.PayloadOffset(10, 2, 1, 4); got != 2*10*584+10*576+4*8 {
		t.Fatalf("payload offset %d", got)
	}
	if got := ds.KeyOffset(10, 2, 4); got != (2*10+4)*132 {
		t.Fatalf("key offset %d", got)
	}
	if _, ok := ds.PayloadBytes(math.MaxUint64 / 100); ok {
		t.Fatal("overflow not detected")
	}
	// Every byte of an n-chunk payload is covered exactly once.
	lay := testLayout()
	n := uint64(5)
	total, _ := lay.PayloadBytes(n)
	seen := make([]int, total)
	for ly := range lay.Layers {
		for s, seg := range lay.Layers[ly].Segments {
			for i := range n {
				off := lay.PayloadOffset(n, ly, s, i)
				for k := range uint64(seg) {
					seen[off+k]++
				}
			}
		}
	}
	for i, c := range seen {
		if c != 1 {
			t.Fatalf("payload byte %d covered %d times", i, c)
		}
	}

	bad := func(f func(l *Layout)) Layout { l := DeepSeekV4Layout(8); f(&l); return l }
	tests := []struct {
		name string
		l    Layout
	}{
		{"no layers", bad(func(l *Layout) { l.Layers = nil })},
		{"zero cpp", bad(func(l *Layout) { l.ChunksPerPage = 0 })},
		{"huge cpp", bad(func(l *Layout) { l.ChunksPerPage = MaxChunksPerPage + 1 })},
		{"zero key", bad(func(l *Layout) { l.KeyBytes = 0 })},
		{"zero targets", bad(func(l *Layout) { l.TargetLayers = 0 })},
		{"too many targets", bad(func(l *Layout) { l.TargetLayers = MaxTargetLayers + 1 })},
		{"zero tau", bad(func(l *Layout) { l.CycleSteps = 0 })},
		{"zero slots", bad(func(l *Layout) { l.ReserveSlots = 0 })},
		{"row too small", bad(func(l *Layout) { l.Layers[3].RowBytes = 64*584 - 1 })},
		{"zero segment", bad(func(l *Layout) { l.Layers[0].Segments = []uint32{576, 0} })},
		{"no segments", bad(func(l *Layout) { l.Layers[0].Segments = nil })},
		{"huge segment", bad(func(l *Layout) { l.Layers[0].Segments = []uint32{math.MaxUint32, math.MaxUint32} })},
	}
	for _, tt := range tests {
		if err := tt.l.Validate(); !errors.Is(err, &Error{Code: CodeBadLayout}) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
	for _, r := range []float64{-0.1, 1.5, math.NaN(), math.Inf(1)} {
		if err := (&Policy{KMaxRatio: r}).Validate(); err == nil {
			t.Errorf("kmax_ratio %v accepted", r)
		}
	}
	if err := (&Open{Persist: true, Layout: ds}).Validate(); err == nil {
		t.Error("persisted session without a name accepted")
	}
	if err := (&Open{Name: "x", Persist: true, Layout: ds}).Validate(); err != nil {
		t.Error(err)
	}
}

func TestRegionRow(t *testing.T) {
	d := RegionDesc{Size: 2*4*10 + 5, Slots: 4, Layers: []RegionLayer{{0, 10}, {40, 10}}}
	mem := make([]byte, d.Size)
	for i := range mem {
		mem[i] = byte(i)
	}
	if r := d.Row(mem, 1, 2); len(r) != 10 || r[0] != 60 {
		t.Fatalf("row %v", r)
	}
	if d.Row(mem, 2, 0) != nil || d.Row(mem, 0, 4) != nil || d.Row(mem, -1, 0) != nil || d.Row(mem[:45], 1, 1) != nil {
		t.Fatal("out-of-range row returned")
	}
}

func TestNegotiate(t *testing.T) {
	tests := []struct {
		min, max uint16
		want     uint16
		ok       bool
	}{
		{1, 1, 1, true},
		{1, 9, MaxVersion, true},
		{2, 9, 0, false},
		{0, 0, 0, false},
	}
	for _, tt := range tests {
		v, err := (&Hello{MinVersion: tt.min, MaxVersion: tt.max}).Negotiate()
		if (err == nil) != tt.ok || v != tt.want {
			t.Errorf("%d..%d: %d %v", tt.min, tt.max, v, err)
		}
		if err != nil && !errors.Is(err, &Error{Code: CodeUnsupportedVersion}) {
			t.Errorf("%d..%d: code %v", tt.min, tt.max, CodeOf(err))
		}
	}
}

// TestSizeHints: the size hints used to allocate frame buffers are exact.
func TestSizeHints(t *testing.T) {
	for _, s := range samples() {
		sz, ok := s.msg.(sizer)
		if !ok {
			continue
		}
		b, _ := s.msg.AppendBinary(nil)
		if sz.encodedSize() != len(b) {
			t.Errorf("%s: hint %d, encoding %d bytes", s.name, sz.encodedSize(), len(b))
		}
	}
}

// The descriptor tells the client what its fd is; Map only maps host memory
// and names the way out for GPU memory.
func TestRegionMapByKind(t *testing.T) {
	f := memfd(t, "kind", 4096)
	defer f.Close()
	tests := []struct {
		name   string
		desc   RegionDesc
		wantOK bool
	}{
		{"memfd maps", RegionDesc{Size: 4096, Kind: RegionMemfd, Device: NoDevice}, true},
		{"cuda refused", RegionDesc{Size: 4096, Kind: RegionCUDA, Device: 0}, false},
		{"unknown kind refused", RegionDesc{Size: 4096, Kind: 9, Device: 3}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem, err := (&Region{RegionDesc: tt.desc, File: f}).Map()
			if tt.wantOK {
				if err != nil || len(mem) != 4096 {
					t.Fatalf("Map: %d bytes, %v", len(mem), err)
				}
				Unmap(mem)
				return
			}
			if !errors.Is(err, ErrDeviceRegion) || mem != nil {
				t.Fatalf("Map of %v: %v, want ErrDeviceRegion", tt.desc.Kind, err)
			}
			if !strings.Contains(err.Error(), "DeviceHostOnly") {
				t.Fatalf("error does not say how to get host memory: %v", err)
			}
		})
	}
}

// TestPersistDurability: the 8-byte body of older clients still decodes as
// local; cluster adds a u32; other values are refused.
func TestPersistDurability(t *testing.T) {
	for _, m := range []Persist{{Session: 7}, {Session: 7, Durability: DurabilityCluster}} {
		b, err := m.AppendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[Durability]int{DurabilityLocal: 8, DurabilityCluster: 12}[m.Durability]; len(b) != want {
			t.Fatalf("%v: %d B, want %d", m.Durability, len(b), want)
		}
		var got Persist
		if err := got.Decode(b); err != nil || got != m {
			t.Fatalf("round trip %+v: %+v %v", m, got, err)
		}
	}
	bad := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint64(nil, 7), 9)
	var p Persist
	if err := p.Decode(bad); !errors.Is(err, ErrMalformed) {
		t.Fatalf("durability 9: %v", err)
	}
	if err := p.Decode(append(bad[:8:8], 1, 0)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("2 trailing bytes: %v", err)
	}
}
