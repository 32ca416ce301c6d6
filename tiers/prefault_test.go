package tiers

import (
	"bytes"
	"errors"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// resident counts the pages of b the kernel has mapped in (mincore).
func resident(t *testing.T, b []byte) int {
	t.Helper()
	start := uintptr(unsafe.Pointer(&b[0]))
	if start%4096 != 0 {
		t.Fatalf("range starts at %#x, not page-aligned", start)
	}
	vec := make([]byte, (len(b)+4095)/4096)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, start, uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatalf("mincore: %v", e)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

func waitPrefault(t *testing.T, r *Region) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		r.mu.Lock()
		busy := r.prefaulting
		r.mu.Unlock()
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("prefaulter still running after 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// A fresh region populates the slots its first allocations take (up to
// prefaultAhead bytes of them), not the whole reserve, and moves ahead as
// allocations reach new slots; populating never changes what a slot holds.
func TestRegionPrefaultsAheadOfAllocation(t *testing.T) {
	l := dsLayout() // 786,240 B pages: prefaultAhead covers 85 slots
	const slots = 256
	r, err := NewRegion(RegionConfig{Session: 1, Layout: l, Slots: slots})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	mem := r.mem.(*memfdMemory)
	ahead := prefaultAhead / r.geo.pageBytes
	// Layer 0's rows of slots [from, to), trimmed to whole pages inside.
	layer0 := func(from, to int) []byte {
		a, b := r.layerOff[0]+int64(from)*r.stride[0], r.layerOff[0]+int64(to)*r.stride[0]
		return mem.data[(a+4095)/4096*4096 : b/4096*4096]
	}
	waitPrefault(t, r)
	if mem.noPopulate {
		t.Skip("this kernel populates memfd memory neither with MADV_POPULATE_WRITE nor fallocate")
	}
	// fallocate allocates without mapping: resident in the file, not yet in
	// this mapping, so mincore sees it only after MADV_POPULATE_WRITE.
	if got := resident(t, layer0(0, ahead-1)); got == 0 {
		t.Logf("slots populated by fallocate (not mapped yet): mincore cannot see them")
	} else if want := len(layer0(0, ahead-1)) / 4096; got < want {
		t.Errorf("first %d slots: %d of %d pages resident, want all", ahead-1, got, want)
	}
	if got := resident(t, layer0(ahead+2, slots)); got != 0 {
		t.Errorf("slots beyond %d: %d pages resident before any use, want none", ahead+2, got)
	}
	// Write a page into slot 0, allocate up to slot 30: the prefaulter
	// moves on to 30 + ahead, and slot 0 still holds its bytes.
	page := bytes.Repeat([]byte{0xa5}, r.geo.pageBytes)
	a, err := r.Allocate(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WritePage(a.Slot, 0, 1, page); err != nil {
		t.Fatal(err)
	}
	for p := uint32(1); p <= 30; p++ {
		if _, err := r.Allocate(p); err != nil {
			t.Fatal(err)
		}
	}
	waitPrefault(t, r)
	r.mu.Lock()
	used, populated := r.used, r.populated
	r.mu.Unlock()
	if used != 31 || populated != int32(min(slots, 31+ahead)) {
		t.Errorf("used %d, populated %d; want 31 and %d", used, populated, min(slots, 31+ahead))
	}
	got := make([]byte, r.geo.pageBytes)
	if g, err := r.ReadPage(a.Slot, 0, got); err != nil || g != 1 || !bytes.Equal(got, page) {
		t.Errorf("slot 0 after populating: gen %d, err %v, bytes equal %v", g, err, bytes.Equal(got, page))
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	// Close waited for the prefaulter: nothing of it outlives the region.
	r.mu.Lock()
	busy := r.prefaulting
	r.mu.Unlock()
	if busy {
		t.Error("prefaulter running after Close")
	}
}

// PinBound pins and reports the slots of the pages already bound, as
// Allocate plus PinLoading would, marks the others -1, and the pins hold:
// a pinned slot is never the victim of a later allocation.
func TestRegionPinBound(t *testing.T) {
	r, err := NewRegion(RegionConfig{Session: 1, Layout: smallLayout, Slots: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for p := uint32(10); p < 14; p++ {
		a, err := r.Allocate(p)
		if err != nil {
			t.Fatal(err)
		}
		if p == 11 {
			if err := r.WritePage(a.Slot, p, 7, make([]byte, r.geo.pageBytes)); err != nil {
				t.Fatal(err)
			}
		}
	}
	pages := []uint32{10, 11, 20}
	slots, gens := make([]int32, 3), make([]uint64, 3)
	missing, err := r.PinBound(5, pages, slots, gens)
	if err != nil || missing != 1 {
		t.Fatalf("PinBound: %d missing, %v; want 1, nil", missing, err)
	}
	for i, p := range pages[:2] {
		s, g, ok := r.Lookup(p)
		if !ok || int32(s) != slots[i] || g != gens[i] {
			t.Errorf("page %d: PinBound said slot %d gen %d, Lookup %d %d %v", p, slots[i], gens[i], s, g, ok)
		}
		if r.Pins(s) != 1 {
			t.Errorf("page %d slot %d: %d pins, want 1", p, s, r.Pins(s))
		}
	}
	if slots[2] != -1 || gens[1] != 7 || gens[0] != 0 {
		t.Errorf("slots %v gens %v: want page 20 unbound (-1), page 11 at generation 7, page 10 not loaded", slots, gens)
	}
	// Four more pages take the two unpinned slots in turn; 10 and 11,
	// pinned, stay where they are.
	for _, p := range []uint32{20, 21, 22, 23} {
		if _, err := r.Allocate(p); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range pages[:2] {
		if s, _, ok := r.Lookup(p); !ok || int32(s) != slots[i] {
			t.Errorf("pinned page %d: slot %d bound %v after later allocations, want slot %d", p, s, ok, slots[i])
		}
	}
	if err := r.Release(5); err != nil {
		t.Fatal(err)
	}
	for _, p := range []uint32{24, 25, 26} {
		if _, err := r.Allocate(p); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, ok := r.Lookup(10); ok {
		t.Error("page 10 still bound after its lease ended and three newer pages came: its pin outlived Release")
	}
	if _, err := r.PinBound(6, pages, slots[:1], gens); !errors.Is(err, ErrSize) {
		t.Errorf("short slots: %v, want ErrSize", err)
	}
}
