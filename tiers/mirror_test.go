package tiers

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"
	"unsafe"
)

func TestMirrorBudgetAndExtents(t *testing.T) {
	const page = 10000 // slot 12288
	m := NewHostMirror(MirrorConfig{Budget: 5 * 12288, ExtentBytes: 2 * 12288})
	defer m.Close()
	ctx := context.Background()
	for p := uint32(0); p < 5; p++ {
		if err := m.Put(ctx, PageID{1, p}, 1, make([]byte, page)); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Put(ctx, PageID{1, 5}, 1, make([]byte, page)); !errors.Is(err, ErrBudget) {
		t.Fatalf("Put over budget: %v, want ErrBudget", err)
	}
	used, mapped := m.Footprint()
	if used != 5*12288 || mapped != 5*12288 {
		t.Errorf("used %d mapped %d, want %d each (last extent trimmed to the budget)", used, mapped, 5*12288)
	}
	// Emptying all but one extent unmaps the empty ones.
	for p := uint32(0); p < 5; p++ {
		if err := m.Delete(ctx, PageID{1, p}); err != nil {
			t.Fatal(err)
		}
	}
	used, mapped = m.Footprint()
	if used != 0 || mapped > 2*12288 {
		t.Errorf("after deleting everything: used %d mapped %d", used, mapped)
	}
	// Generations never go backwards.
	if err := m.Put(ctx, PageID{1, 0}, 5, make([]byte, page)); err != nil {
		t.Fatal(err)
	}
	if err := m.Put(ctx, PageID{1, 0}, 4, make([]byte, page)); !errors.Is(err, ErrStale) {
		t.Errorf("older generation: %v, want ErrStale", err)
	}
	// Slots are page-aligned.
	_, err := m.view(PageID{1, 0}, func(_ uint64, data []byte) error {
		if addr := uintptrOf(data); addr%4096 != 0 {
			t.Errorf("slot at %#x not 4096-aligned", addr)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestMirrorWriteChunk(t *testing.T) {
	m := NewHostMirror(MirrorConfig{})
	defer m.Close()
	g, _ := NewGeometry(smallLayout)
	r := rand.New(rand.NewPCG(9, 9))
	id := PageID{2, 0}
	// Dirty a slot first so the new page must be zeroed, not inherit bytes.
	if err := m.Put(context.Background(), PageID{9, 9}, 1, bytes.Repeat([]byte{0xff}, g.PageBytes())); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(context.Background(), PageID{9, 9}); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, g.PageBytes())
	var gen uint64
	for c := 0; c < 3; c++ {
		p := randBytes(r, g.ChunkBytes())
		_ = g.ScatterChunk(want, c, p)
		prev, err := m.WriteChunk(id, gen+1, g, c, p)
		if err != nil || prev != gen {
			t.Fatalf("WriteChunk %d: prev %d err %v", c, prev, err)
		}
		gen++
	}
	got := make([]byte, g.PageBytes())
	if g2, err := m.Get(context.Background(), id, got); err != nil || g2 != gen || !bytes.Equal(got, want) {
		t.Fatalf("page built from chunks: gen %d err %v equal %v", g2, err, bytes.Equal(got, want))
	}
	c1 := make([]byte, g.ChunkBytes())
	if _, err := m.ReadChunk(id, g, 1, c1); err != nil {
		t.Fatal(err)
	}
	w1 := make([]byte, g.ChunkBytes())
	_ = g.GatherChunk(want, 1, w1)
	if !bytes.Equal(c1, w1) {
		t.Error("ReadChunk differs")
	}
	if _, err := m.WriteChunk(id, gen, g, 0, c1); !errors.Is(err, ErrStale) {
		t.Errorf("WriteChunk without a newer generation: %v", err)
	}
	if _, err := m.WriteChunk(id, gen+1, g, 0, c1[1:]); !errors.Is(err, ErrSize) {
		t.Errorf("short chunk: %v", err)
	}
}

func uintptrOf(b []byte) uintptr {
	if len(b) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(&b[0]))
}

// A chunk write waits while its page is being written to SSD (spilled or cleaned): the
// bytes and the checksum that reach SSD must be one version. After a spill the page has
// left the mirror (errMiss: the store brings it back); after a clean it is still there.
func TestMirrorWriteWaitsForSSDWrite(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		start func(m *HostMirror) []spillItem
		end   func(m *HostMirror, it spillItem)
		want  error
	}{
		{"spill", func(m *HostMirror) []spillItem { return m.spillCandidates(1, false, 0) },
			func(m *HostMirror, it spillItem) { m.endSpill(it, true) }, errMiss},
		{"clean", func(m *HostMirror) []spillItem { return m.cleanCandidates(1) },
			func(m *HostMirror, it spillItem) { m.endFlush(it, true) }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewHostMirror(MirrorConfig{})
			defer m.Close()
			id := PageID{Session: 1, Page: 1}
			page := make([]byte, 8192)
			if err := m.Put(ctx, id, 1, page); err != nil {
				t.Fatal(err)
			}
			items := tc.start(m)
			if len(items) != 1 {
				t.Fatalf("%d candidates", len(items))
			}
			filled := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				_, err := m.writeInPlace(id, 2, len(page), 64, false, func(b []byte) { close(filled); b[0] = 9 })
				done <- err
			}()
			select {
			case <-filled:
				tc.end(m, items[0])
				<-done
				t.Fatal("a chunk write changed a page while it was written to SSD")
			case <-time.After(50 * time.Millisecond):
			}
			tc.end(m, items[0])
			if err := <-done; !errors.Is(err, tc.want) && !(tc.want == nil && err == nil) {
				t.Fatalf("write after the %s: %v, want %v", tc.name, err, tc.want)
			}
		})
	}
}

// A clean must not take a page whose chunk write is already filling it: the
// writer passed the spilling check before the mark, so the bytes would change
// under the SSD write and its checksum (spillCandidates skips such pages too).
func TestMirrorCleanSkipsPageUnderChunkWrite(t *testing.T) {
	m := NewHostMirror(MirrorConfig{})
	defer m.Close()
	id := PageID{Session: 1, Page: 1}
	page := make([]byte, 8192)
	if err := m.Put(context.Background(), id, 1, page); err != nil {
		t.Fatal(err)
	}
	filling, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := m.writeInPlace(id, 2, len(page), 64, false, func(b []byte) {
			close(filling)
			<-release
			b[0] = 9
		})
		done <- err
	}()
	<-filling
	items := m.cleanCandidates(1)
	for _, it := range items {
		m.endFlush(it, false)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(items) != 0 {
		t.Fatalf("clean took page %v at generation %d while a chunk write was filling it", items[0].p.id, items[0].gen)
	}
	items = m.cleanCandidates(1)
	if len(items) != 1 || items[0].gen != 2 {
		t.Fatalf("after the write: %d candidates", len(items))
	}
	m.endFlush(items[0], true)
}
