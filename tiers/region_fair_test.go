package tiers

import (
	"testing"
	"time"
)

// gatedBackend wraps the memfd backend; a read blocks until the test lets it
// go, so the test controls exactly which reads overlap a waiting writer.
type gatedBackend struct {
	entered chan struct{} // a read has started (buffered)
	release chan struct{} // one value lets one blocked read finish (buffered)
}

type gatedMemory struct {
	*memfdMemory
	g *gatedBackend
}

func (b *gatedBackend) newMemory(name string, size int64) (regionMemory, error) {
	m, err := newMemfd(name, size)
	if err != nil {
		return nil, err
	}
	return gatedMemory{m, b}, nil
}

func (m gatedMemory) read(spans []span, dst []byte) error {
	m.g.entered <- struct{}{}
	<-m.g.release
	return m.memfdMemory.read(spans, dst)
}

func (r *Region) exclWaiters(slot int) int32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.slots[slot].exclWait
}

// A reader that arrives while a whole-page writer waits for an earlier
// reader must queue behind the writer: otherwise overlapping readers keep the
// reader count above zero and the writer never runs (it hung the tiertest
// ReadersRaceWriter subtest on the GPU, where every read takes tens of µs).
// The late reader then sees the writer's page, never a torn one.
func TestRegionWriterNotStarvedByReaders(t *testing.T) {
	tests := []struct {
		name string
		// exclusive is the operation that must wait for the first reader.
		exclusive func(r *Region, page []byte) error
		// lateGen is what the late reader must report (0: it must fail,
		// the slot no longer holds the page).
		lateGen uint64
	}{
		{"WritePage", func(r *Region, page []byte) error { return r.WritePage(0, 7, 2, page) }, 2},
		{"Free", func(r *Region, _ []byte) error { return r.Free(7) }, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &gatedBackend{entered: make(chan struct{}, 4), release: make(chan struct{}, 4)}
			r, err := NewRegion(RegionConfig{Session: 1, Layout: smallLayout, Slots: 2, Backend: g})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			// On failure, let every blocked read finish so Close can return.
			defer func() {
				for range cap(g.release) {
					g.release <- struct{}{}
				}
			}()
			n := r.geo.pageBytes
			if _, err := r.Allocate(7); err != nil {
				t.Fatal(err)
			}
			old, fresh := make([]byte, n), make([]byte, n)
			for i := range fresh {
				old[i], fresh[i] = 1, 2
			}
			if err := r.WritePage(0, 7, 1, old); err != nil {
				t.Fatal(err)
			}

			type result struct {
				gen uint64
				buf []byte
				err error
			}
			read := func(out chan<- result) {
				dst := make([]byte, n)
				gen, err := r.ReadPage(0, 7, dst)
				out <- result{gen, dst, err}
			}
			first := make(chan result, 1)
			go read(first)
			<-g.entered // the first reader holds the slot

			wrote := make(chan error, 1)
			go func() { wrote <- tc.exclusive(r, fresh) }()
			deadline := time.Now().Add(5 * time.Second)
			for r.exclWaiters(0) == 0 {
				if time.Now().After(deadline) {
					t.Fatal("writer never queued for the slot")
				}
				time.Sleep(time.Millisecond)
			}

			late := make(chan result, 1)
			go read(late)
			select {
			case <-g.entered:
				t.Fatal("a reader was admitted while a writer waited for the slot")
			case <-time.After(50 * time.Millisecond):
			}

			g.release <- struct{}{} // let the first reader finish
			if res := <-first; res.err != nil || res.gen != 1 || res.buf[0] != 1 {
				t.Fatalf("first reader: gen %d err %v", res.gen, res.err)
			}
			select {
			case err := <-wrote:
				if err != nil {
					t.Fatalf("writer: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("writer still blocked after the only reader finished")
			}
			if tc.lateGen != 0 {
				<-g.entered
				g.release <- struct{}{}
			}
			res := <-late
			switch {
			case tc.lateGen == 0 && res.err == nil:
				t.Fatalf("late reader of a freed slot: gen %d, want an error", res.gen)
			case tc.lateGen != 0 && (res.err != nil || res.gen != tc.lateGen):
				t.Fatalf("late reader: gen %d err %v, want gen %d", res.gen, res.err, tc.lateGen)
			case tc.lateGen != 0:
				for i, b := range res.buf {
					if b != 2 {
						t.Fatalf("late reader: byte %d = %d, torn or old page", i, b)
					}
				}
			}
		})
	}
}
