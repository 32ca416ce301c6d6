package tiertest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/flashmemory/flashmemory/tiers"
)

// Config describes the tier under test.
type Config struct {
	// New returns a fresh, empty tier; the suite closes it.
	New func(t testing.TB) tiers.Tier
	// PageBytes is the page length the tier accepts (fixed per session for
	// reserve regions).
	PageBytes int
	// Sessions the suite may use (at least one; a second enables the
	// isolation checks). The tier must accept pages of these sessions.
	Sessions []uint64
	// Capacity is the number of pages per session the tier holds without
	// evicting (0 = unbounded).
	Capacity int
	// FixedPageSize: Put of a page of any other length fails with ErrSize.
	FixedPageSize bool
	// Reopen, if set, closes the tier and opens it again on the same storage;
	// the suite then checks that pages survive.
	Reopen func(t testing.TB, old tiers.Tier) tiers.Tier
}

// Fill writes deterministic bytes for (id, gen) into b, so any page read back
// can be checked against the generation it was reported with.
func Fill(b []byte, id tiers.PageID, gen uint64) {
	var seed [8]byte
	x := id.Session*0x9E3779B97F4A7C15 ^ uint64(id.Page)*0xBF58476D1CE4E5B9 ^ gen*0x94D049BB133111EB
	for i := 0; i < len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(seed[:], x)
		copy(b[i:], seed[:])
	}
}

// Page returns a fresh page of n bytes filled for (id, gen).
func Page(n int, id tiers.PageID, gen uint64) []byte {
	b := make([]byte, n)
	Fill(b, id, gen)
	return b
}

func (c Config) pages() int {
	if c.Capacity > 0 && c.Capacity < 8 {
		return c.Capacity
	}
	return 8
}

// Run runs the suite.
func Run(t *testing.T, c Config) {
	if c.New == nil || c.PageBytes <= 0 || len(c.Sessions) == 0 {
		t.Fatal("tiertest: Config needs New, PageBytes and Sessions")
	}
	t.Run("RoundTrip", func(t *testing.T) { roundTrip(t, c) })
	t.Run("Missing", func(t *testing.T) { missing(t, c) })
	t.Run("Overwrite", func(t *testing.T) { overwrite(t, c) })
	t.Run("Sizes", func(t *testing.T) { sizes(t, c) })
	t.Run("Delete", func(t *testing.T) { del(t, c) })
	t.Run("DeleteSession", func(t *testing.T) { deleteSession(t, c) })
	t.Run("Stats", func(t *testing.T) { stats(t, c) })
	t.Run("Context", func(t *testing.T) { canceled(t, c) })
	t.Run("Closed", func(t *testing.T) { closed(t, c) })
	t.Run("Concurrent", func(t *testing.T) { concurrent(t, c) })
	t.Run("ReadersRaceWriter", func(t *testing.T) { readersRaceWriter(t, c) })
	if c.Reopen != nil {
		t.Run("Reopen", func(t *testing.T) { reopen(t, c) })
	}
}

func open(t *testing.T, c Config) tiers.Tier {
	t.Helper()
	tr := c.New(t)
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tr
}

func mustPut(t testing.TB, tr tiers.Tier, id tiers.PageID, gen uint64, n int) []byte {
	t.Helper()
	p := Page(n, id, gen)
	if err := tr.Put(context.Background(), id, gen, p); err != nil {
		t.Fatalf("Put(%v, gen %d): %v", id, gen, err)
	}
	return p
}

func mustGet(t testing.TB, tr tiers.Tier, id tiers.PageID, n int, wantGen uint64, want []byte) {
	t.Helper()
	dst := make([]byte, n)
	gen, err := tr.Get(context.Background(), id, dst)
	if err != nil {
		t.Fatalf("Get(%v): %v", id, err)
	}
	if gen != wantGen {
		t.Fatalf("Get(%v) generation = %d, want %d", id, gen, wantGen)
	}
	if !bytes.Equal(dst, want) {
		t.Fatalf("Get(%v): bytes differ from what was put", id)
	}
}

func roundTrip(t *testing.T, c Config) {
	tr := open(t, c)
	want := map[tiers.PageID][]byte{}
	for _, s := range c.Sessions {
		for p := 0; p < c.pages(); p++ {
			id := tiers.PageID{Session: s, Page: uint32(p * 3)}
			want[id] = mustPut(t, tr, id, uint64(p+1), c.PageBytes)
		}
	}
	for id, w := range want {
		mustGet(t, tr, id, c.PageBytes, uint64(id.Page/3+1), w)
	}
}

func missing(t *testing.T, c Config) {
	tr := open(t, c)
	s := c.Sessions[0]
	mustPut(t, tr, tiers.PageID{Session: s, Page: 1}, 1, c.PageBytes)
	for _, id := range []tiers.PageID{{Session: s, Page: 2}, {Session: s, Page: 0}, {Session: s, Page: ^uint32(0)}} {
		_, err := tr.Get(context.Background(), id, make([]byte, c.PageBytes))
		if !errors.Is(err, tiers.ErrNotFound) {
			t.Errorf("Get(%v) of a page never put: err = %v, want ErrNotFound", id, err)
		}
	}
}

func overwrite(t *testing.T, c Config) {
	tr := open(t, c)
	id := tiers.PageID{Session: c.Sessions[0], Page: 7}
	mustPut(t, tr, id, 1, c.PageBytes)
	w := mustPut(t, tr, id, 5, c.PageBytes)
	mustGet(t, tr, id, c.PageBytes, 5, w)
	w = mustPut(t, tr, id, 6, c.PageBytes)
	mustGet(t, tr, id, c.PageBytes, 6, w)
}

func sizes(t *testing.T, c Config) {
	tr := open(t, c)
	ctx := context.Background()
	id := tiers.PageID{Session: c.Sessions[0], Page: 1}
	mustPut(t, tr, id, 1, c.PageBytes)
	tests := []struct {
		name string
		run  func() error
	}{
		{"get short buffer", func() error { _, err := tr.Get(ctx, id, make([]byte, c.PageBytes-1)); return err }},
		{"get long buffer", func() error { _, err := tr.Get(ctx, id, make([]byte, c.PageBytes+1)); return err }},
		{"put empty page", func() error { return tr.Put(ctx, tiers.PageID{Session: c.Sessions[0], Page: 2}, 1, nil) }},
	}
	if c.FixedPageSize {
		tests = append(tests, struct {
			name string
			run  func() error
		}{"put wrong length", func() error {
			return tr.Put(ctx, tiers.PageID{Session: c.Sessions[0], Page: 2}, 1, make([]byte, c.PageBytes+1))
		}})
	}
	for _, tc := range tests {
		if err := tc.run(); !errors.Is(err, tiers.ErrSize) {
			t.Errorf("%s: err = %v, want ErrSize", tc.name, err)
		}
	}
	// A failed call must not disturb the stored page.
	mustGet(t, tr, id, c.PageBytes, 1, Page(c.PageBytes, id, 1))
}

func del(t *testing.T, c Config) {
	tr := open(t, c)
	ctx := context.Background()
	a := tiers.PageID{Session: c.Sessions[0], Page: 1}
	b := tiers.PageID{Session: c.Sessions[0], Page: 2}
	mustPut(t, tr, a, 1, c.PageBytes)
	wb := mustPut(t, tr, b, 1, c.PageBytes)
	if err := tr.Delete(ctx, a); err != nil {
		t.Fatalf("Delete(%v): %v", a, err)
	}
	if _, err := tr.Get(ctx, a, make([]byte, c.PageBytes)); !errors.Is(err, tiers.ErrNotFound) {
		t.Errorf("Get after Delete: err = %v, want ErrNotFound", err)
	}
	if err := tr.Delete(ctx, a); !errors.Is(err, tiers.ErrNotFound) {
		t.Errorf("second Delete: err = %v, want ErrNotFound", err)
	}
	mustGet(t, tr, b, c.PageBytes, 1, wb)
	// The page can be written again after a delete.
	wa := mustPut(t, tr, a, 2, c.PageBytes)
	mustGet(t, tr, a, c.PageBytes, 2, wa)
}

func deleteSession(t *testing.T, c Config) {
	tr := open(t, c)
	ctx := context.Background()
	kept := map[tiers.PageID][]byte{}
	for i, s := range c.Sessions {
		for p := 0; p < c.pages(); p++ {
			id := tiers.PageID{Session: s, Page: uint32(p)}
			w := mustPut(t, tr, id, 1, c.PageBytes)
			if i > 0 {
				kept[id] = w
			}
		}
	}
	if err := tr.DeleteSession(ctx, c.Sessions[0]); err != nil {
		t.Fatalf("DeleteSession: %v", err)
	}
	for p := 0; p < c.pages(); p++ {
		id := tiers.PageID{Session: c.Sessions[0], Page: uint32(p)}
		if _, err := tr.Get(ctx, id, make([]byte, c.PageBytes)); !errors.Is(err, tiers.ErrNotFound) {
			t.Errorf("Get(%v) after DeleteSession: err = %v, want ErrNotFound", id, err)
		}
	}
	for id, w := range kept {
		mustGet(t, tr, id, c.PageBytes, 1, w)
	}
	if err := tr.DeleteSession(ctx, c.Sessions[0]); err != nil {
		t.Errorf("DeleteSession of an empty session: %v", err)
	}
}

func stats(t *testing.T, c Config) {
	tr := open(t, c)
	ctx := context.Background()
	n := c.pages()
	s := c.Sessions[0]
	for p := 0; p < n; p++ {
		mustPut(t, tr, tiers.PageID{Session: s, Page: uint32(p)}, 1, c.PageBytes)
	}
	for p := 0; p < n; p++ {
		if _, err := tr.Get(ctx, tiers.PageID{Session: s, Page: uint32(p)}, make([]byte, c.PageBytes)); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = tr.Get(ctx, tiers.PageID{Session: s, Page: 1 << 30}, make([]byte, c.PageBytes))
	st := tr.Stats()
	if st.Pages != int64(n) || st.Bytes != int64(n*c.PageBytes) {
		t.Errorf("Stats pages/bytes = %d/%d, want %d/%d", st.Pages, st.Bytes, n, n*c.PageBytes)
	}
	if st.Hits != uint64(n) || st.Misses != 1 {
		t.Errorf("Stats hits/misses = %d/%d, want %d/1", st.Hits, st.Misses, n)
	}
	if st.BytesIn < uint64(n*c.PageBytes) || st.BytesOut < uint64(n*c.PageBytes) {
		t.Errorf("Stats bytes in/out = %d/%d, want ≥ %d", st.BytesIn, st.BytesOut, n*c.PageBytes)
	}
	if err := tr.Delete(ctx, tiers.PageID{Session: s, Page: 0}); err != nil {
		t.Fatal(err)
	}
	if st2 := tr.Stats(); st2.Pages != int64(n-1) {
		t.Errorf("Stats pages after delete = %d, want %d", st2.Pages, n-1)
	}
}

func canceled(t *testing.T, c Config) {
	tr := open(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	id := tiers.PageID{Session: c.Sessions[0], Page: 1}
	if err := tr.Put(ctx, id, 1, make([]byte, c.PageBytes)); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with canceled context: err = %v", err)
	}
	if _, err := tr.Get(ctx, id, make([]byte, c.PageBytes)); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with canceled context: err = %v", err)
	}
}

func closed(t *testing.T, c Config) {
	tr := c.New(t)
	id := tiers.PageID{Session: c.Sessions[0], Page: 1}
	mustPut(t, tr, id, 1, c.PageBytes)
	if err := tr.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := tr.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	ctx := context.Background()
	if err := tr.Put(ctx, id, 2, make([]byte, c.PageBytes)); !errors.Is(err, tiers.ErrClosed) {
		t.Errorf("Put after Close: err = %v, want ErrClosed", err)
	}
	if _, err := tr.Get(ctx, id, make([]byte, c.PageBytes)); !errors.Is(err, tiers.ErrClosed) {
		t.Errorf("Get after Close: err = %v, want ErrClosed", err)
	}
}

func concurrent(t *testing.T, c Config) {
	tr := open(t, c)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	per := c.pages()
	for w, s := range c.Sessions {
		for g := 0; g < 2; g++ {
			wg.Add(1)
			go func(s uint64, g int) {
				defer wg.Done()
				dst := make([]byte, c.PageBytes)
				for round := 1; round <= 4; round++ {
					for p := g; p < per; p += 2 {
						id := tiers.PageID{Session: s, Page: uint32(p)}
						gen := uint64(round)
						if err := tr.Put(ctx, id, gen, Page(c.PageBytes, id, gen)); err != nil {
							errs <- fmt.Errorf("Put(%v): %w", id, err)
							return
						}
						got, err := tr.Get(ctx, id, dst)
						if err != nil {
							errs <- fmt.Errorf("Get(%v): %w", id, err)
							return
						}
						if got != gen || !bytes.Equal(dst, Page(c.PageBytes, id, gen)) {
							errs <- fmt.Errorf("Get(%v): generation %d or bytes wrong after writing %d", id, got, gen)
							return
						}
					}
				}
			}(s, g+w*0)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// readersRaceWriter checks that a Get racing a Put of the same page returns
// bytes that match the generation it reports (no torn pages).
func readersRaceWriter(t *testing.T, c Config) {
	tr := open(t, c)
	ctx := context.Background()
	id := tiers.PageID{Session: c.Sessions[0], Page: 3}
	mustPut(t, tr, id, 1, c.PageBytes)
	const gens = 40
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := make([]byte, c.PageBytes)
			want := make([]byte, c.PageBytes)
			for {
				select {
				case <-done:
					return
				default:
				}
				gen, err := tr.Get(ctx, id, dst)
				if err != nil {
					errs <- fmt.Errorf("Get during writes: %w", err)
					return
				}
				Fill(want, id, gen)
				if !bytes.Equal(dst, want) {
					errs <- fmt.Errorf("Get returned bytes that are not generation %d's", gen)
					return
				}
			}
		}()
	}
	for g := uint64(2); g <= gens; g++ {
		if err := tr.Put(ctx, id, g, Page(c.PageBytes, id, g)); err != nil {
			t.Errorf("Put gen %d: %v", g, err)
			break
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	mustGet(t, tr, id, c.PageBytes, gens, Page(c.PageBytes, id, gens))
}

func reopen(t *testing.T, c Config) {
	tr := c.New(t)
	want := map[tiers.PageID][]byte{}
	for _, s := range c.Sessions {
		for p := 0; p < c.pages(); p++ {
			id := tiers.PageID{Session: s, Page: uint32(p)}
			want[id] = mustPut(t, tr, id, uint64(10+p), c.PageBytes)
		}
	}
	if err := tr.Delete(context.Background(), tiers.PageID{Session: c.Sessions[0], Page: 0}); err != nil {
		t.Fatal(err)
	}
	delete(want, tiers.PageID{Session: c.Sessions[0], Page: 0})
	tr = c.Reopen(t, tr)
	defer tr.Close()
	for id, w := range want {
		mustGet(t, tr, id, c.PageBytes, uint64(10+id.Page), w)
	}
	if _, err := tr.Get(context.Background(), tiers.PageID{Session: c.Sessions[0], Page: 0}, make([]byte, c.PageBytes)); !errors.Is(err, tiers.ErrNotFound) {
		t.Errorf("deleted page after reopen: err = %v, want ErrNotFound", err)
	}
	if st := tr.Stats(); st.Pages != int64(len(want)) {
		t.Errorf("Stats pages after reopen = %d, want %d", st.Pages, len(want))
	}
}
