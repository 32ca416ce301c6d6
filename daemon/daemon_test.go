package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/internal/synth"
	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// testConfig is a small daemon: a 3-target-layer random model with 4 heads
// and a 64-wide hidden state, a short tail and sink so 32K-token sessions
// select something, and the given data directory.
func testConfig(t testing.TB, dir string) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Socket = filepath.Join(dir, "fm.sock")
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Metrics = "off"
	cfg.Host.BudgetBytes = 256 << 20
	cfg.Indexer.Random = []RandomModelConfig{{Name: "test", Seed: 7, Hidden: 64, Rank: 32, Heads: 4, HeadDim: 128, TargetLayers: 3}}
	cfg.Indexer.DefaultModel = "test"
	cfg.Indexer.FirstKeep = 64
	cfg.Indexer.LastKeep = 256
	cfg.Indexer.FallbackRatio = 1
	cfg.ShutdownTimeout = Duration(10 * time.Second)
	cfg.GPU.Mode = GPUOff // these tests map the reserve with mmap, also on GPU hosts
	return cfg
}

type running struct {
	d    *Daemon
	stop context.CancelFunc
	done chan error
}

func start(t testing.TB, cfg Config) *running {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	d, err := New(cfg, WithLogger(log))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{d: d, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- d.Run(ctx) }()
	return r
}

func (r *running) shutdown(t testing.TB) {
	t.Helper()
	r.stop()
	if err := <-r.done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if err := r.d.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// startDialed starts a daemon on a fresh data directory and dials it; both
// go when the test ends.
func startDialed(t *testing.T) (*running, *proto.Client) {
	t.Helper()
	cfg := testConfig(t, t.TempDir())
	rd := start(t, cfg)
	t.Cleanup(func() { rd.shutdown(t) })
	return rd, dial(t, cfg.Socket)
}

func dial(t *testing.T, path string) *proto.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := proto.Dial(ctx, path, &proto.Options{ClientName: t.Name()})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// testLayout: 2 KV layers of different shapes, 64 chunks per page, 132-byte
// keys, 3 target layers.
func testLayout(slots uint32) proto.Layout {
	return proto.Layout{
		ChunksPerPage: 64, KeyBytes: 132, TargetLayers: 3, CycleSteps: 64, ReserveSlots: slots,
		Layers: []proto.LayerLayout{
			{RowBytes: 64 * 40, Segments: []uint32{32, 8}},
			{RowBytes: 64*24 + 512, Segments: []uint32{24}},
		},
	}
}

// appendAll streams chunks [from, to) through the staging region.
func appendAll(t *testing.T, c *proto.Client, sess uint64, l *proto.Layout, seed, from, to uint64, r *rand.Rand) {
	t.Helper()
	ctx := context.Background()
	const batch = 256
	for first := from; first < to; first += batch {
		n := min(batch, to-first)
		size, _ := l.PayloadBytes(n)
		buf := make([]byte, size)
		synth.FillAppend(l, seed, first, n, buf)
		if err := c.WriteStaging(0, buf); err != nil {
			t.Fatal(err)
		}
		keys := synth.Keys(r, int(l.TargetLayers), int(l.KeyBytes), n)
		got, err := c.Append(ctx, &proto.Append{Session: sess, FirstChunk: first, Count: uint32(n), Length: size, Keys: keys})
		if err != nil {
			t.Fatalf("Append %d+%d: %v", first, n, err)
		}
		if got != first+n {
			t.Fatalf("Append returned %d chunks, want %d", got, first+n)
		}
	}
}

func queries(r *rand.Rand, hidden, t int) [][]byte {
	q := make([][]byte, t)
	for i := range q {
		q[i] = synth.Hidden(r, hidden)
	}
	return q
}

// checkPages reads every page of a cycle result through the mapped reserve
// and compares it with the bytes appended.
func checkPages(t *testing.T, l *proto.Layout, desc *proto.RegionDesc, mem []byte, seed, chunks uint64, pages []proto.PageSlot) {
	t.Helper()
	for _, ps := range pages {
		for ly := range l.Layers {
			row := desc.Row(mem, ly, ps.Slot)
			if row == nil {
				t.Fatalf("page %d slot %d layer %d: outside the region", ps.Page, ps.Slot, ly)
			}
			if bad := synth.CheckRow(l, seed, ps.Page, ly, chunks, row); bad >= 0 {
				t.Fatalf("page %d (slot %d) layer %d: chunk %d differs from what was appended", ps.Page, ps.Slot, ly, bad)
			}
		}
	}
}

func TestSessionRoundTripAndResume(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	rd := start(t, cfg)
	c := dial(t, cfg.Socket)
	ctx := context.Background()
	l := testLayout(96)
	op, err := c.Open(ctx, &proto.Open{Name: "keep", Persist: true, Layout: l, Policy: proto.Policy{KMax: 16}})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	mem, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	r := rand.New(rand.NewPCG(1, 2))
	const seed, chunks = 99, 8192 // 32K tokens
	appendAll(t, c, op.Session, &l, seed, 0, chunks, r)

	var lease uint64
	seen := map[uint32]bool{}
	for cyc := 0; cyc < 4; cyc++ {
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Step: uint64(cyc * 64), Position: chunks * 4, Queries: queries(r, 64, 3)}})
		if err != nil {
			t.Fatalf("Cycle: %v", err)
		}
		if res[0].Err != nil {
			t.Fatalf("Cycle entry: %v", res[0].Err)
		}
		if len(res[0].Pages) == 0 {
			t.Fatal("empty resident set")
		}
		checkPages(t, &l, &op.Region.RegionDesc, mem, seed, chunks, res[0].Pages)
		for _, p := range res[0].Pages {
			seen[p.Page] = true
		}
		if lease != 0 {
			if err := c.Release(ctx, lease); err != nil {
				t.Fatalf("Release: %v", err)
			}
		}
		lease = res[0].Lease
	}
	if len(seen) < 3 {
		t.Fatalf("only %d distinct pages were ever resident", len(seen))
	}
	if err := c.Persist(ctx, op.Session); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	c.Close()
	rd.shutdown(t)

	// A new daemon on the same data directory resumes the session.
	rd = start(t, cfg)
	defer rd.shutdown(t)
	c = dial(t, cfg.Socket)
	rr, err := c.Resume(ctx, "keep")
	if err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if rr.Chunks != chunks {
		t.Fatalf("resumed %d chunks, want %d", rr.Chunks, chunks)
	}
	mem2, err := rr.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem2)
	for cyc := 0; cyc < 2; cyc++ {
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: rr.Session, Position: chunks * 4, Queries: queries(r, 64, 3)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("Cycle after resume: %v %v", err, res[0].Err)
		}
		checkPages(t, &l, &rr.Region.RegionDesc, mem2, seed, chunks, res[0].Pages)
	}
}

func TestBadRequestsGetErrorFrames(t *testing.T) {
	rd, c := startDialed(t)
	ctx := context.Background()
	l := testLayout(32)
	op, err := c.Open(ctx, &proto.Open{Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	wantCode := func(err error, code proto.Code) {
		t.Helper()
		var pe *proto.Error
		if !errors.As(err, &pe) || pe.Code != code {
			t.Fatalf("got %v, want code %v", err, code)
		}
	}
	// Cycle before any chunk.
	res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Queries: queries(r, 64, 3)}})
	if err != nil {
		t.Fatal(err)
	}
	wantCode(res[0].Err, proto.CodeNoChunks)
	appendAll(t, c, op.Session, &l, 5, 0, 100, r)
	// Duplicate chunk index, and a gap.
	keys := synth.Keys(r, 3, 132, 1)
	pb, _ := l.PayloadBytes(1)
	_, err = c.Append(ctx, &proto.Append{Session: op.Session, FirstChunk: 99, Count: 1, Inline: true, Payload: make([]byte, pb), Keys: keys})
	wantCode(err, proto.CodeDuplicateChunk)
	_, err = c.Append(ctx, &proto.Append{Session: op.Session, FirstChunk: 101, Count: 1, Inline: true, Payload: make([]byte, pb), Keys: keys})
	wantCode(err, proto.CodeChunkGap)
	// Payload size mismatch.
	_, err = c.Append(ctx, &proto.Append{Session: op.Session, FirstChunk: 100, Count: 1, Inline: true, Payload: make([]byte, pb-1), Keys: keys})
	wantCode(err, proto.CodePayloadSize)
	// Unknown session.
	_, err = c.Append(ctx, &proto.Append{Session: 12345, FirstChunk: 0, Count: 1, Inline: true, Payload: make([]byte, pb), Keys: keys})
	wantCode(err, proto.CodeUnknownSession)
	// Foreign session: a second connection cannot append, cycle, persist or close it.
	c2 := dial(t, rd.d.cfg.Socket)
	_, err = c2.Append(ctx, &proto.Append{Session: op.Session, FirstChunk: 100, Count: 1, Inline: true, Payload: make([]byte, pb), Keys: keys})
	wantCode(err, proto.CodeNotOwner)
	wantCode(c2.CloseSession(ctx, op.Session, true), proto.CodeNotOwner)
	res, err = c2.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Queries: queries(r, 64, 3)}})
	if err != nil {
		t.Fatal(err)
	}
	wantCode(res[0].Err, proto.CodeNotOwner)
	// Wrong query size.
	res, err = c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Queries: [][]byte{{1}, {2}, {3}}}})
	if err != nil {
		t.Fatal(err)
	}
	wantCode(res[0].Err, proto.CodePayloadSize)
	// The session still works after all that.
	n, err := c.Append(ctx, &proto.Append{Session: op.Session, FirstChunk: 100, Count: 1, Inline: true, Payload: make([]byte, pb), Keys: keys})
	if err != nil || n != 101 {
		t.Fatalf("append after errors: %d %v", n, err)
	}
	// Unknown lease.
	wantCode(c.Release(ctx, 777), proto.CodeUnknownLease)
}

// Decode chunks written straight into the tail cells a cycle assigned, then
// committed, are in the mirror afterwards and read back from the reserve in
// later cycles, including across a page boundary.
func TestDecodeCommitIntoTailCells(t *testing.T) {
	_, c := startDialed(t)
	ctx := context.Background()
	l := testLayout(64)
	op, err := c.Open(ctx, &proto.Open{Name: "dec", Persist: true, Layout: l, Policy: proto.Policy{KMax: 12}})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	r := rand.New(rand.NewPCG(7, 8))
	const seed = 3
	chunks := uint64(1000) // page 15 is partial: decode crosses into page 16
	appendAll(t, c, op.Session, &l, seed, 0, chunks, r)
	var lease uint64
	for cyc := 0; cyc < 6; cyc++ {
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: chunks * 4, Queries: queries(r, 64, 3)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("cycle %d: %v %v", cyc, err, res[0].Err)
		}
		checkPages(t, &l, &op.Region.RegionDesc, mem, seed, chunks, res[0].Pages)
		if lease != 0 {
			c.Release(ctx, lease)
		}
		lease = res[0].Lease
		tail := map[uint32]uint32{}
		for _, ps := range res[0].Tail {
			tail[ps.Page] = ps.Slot
		}
		const n = 16
		for i := uint64(0); i < n; i++ {
			ch := chunks + i
			slot, ok := tail[uint32(ch/64)]
			if !ok {
				t.Fatalf("cycle %d: no tail cell for chunk %d (tail %v)", cyc, ch, res[0].Tail)
			}
			for ly := range l.Layers {
				synth.FillCell(&l, seed, ch, ly, op.Region.Row(mem, ly, slot))
			}
		}
		got, err := c.Commit(ctx, &proto.Commit{Session: op.Session, FirstChunk: chunks, Count: n, Keys: synth.Keys(r, 3, 132, n)})
		if err != nil || got != chunks+n {
			t.Fatalf("commit: %d %v", got, err)
		}
		chunks += n
	}
	// Commit outside the tail allocation is refused.
	_, err = c.Commit(ctx, &proto.Commit{Session: op.Session, FirstChunk: chunks, Count: 200, Keys: synth.Keys(r, 3, 132, 200)})
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Code != proto.CodeBadRequest {
		t.Fatalf("commit past the tail: %v", err)
	}
	// The committed chunks reached the mirror: close the session (kept on
	// SSD), resume it into a fresh reserve region and read them back.
	c.Release(ctx, lease)
	if err := c.CloseSession(ctx, op.Session, false); err != nil {
		t.Fatal(err)
	}
	rr, err := c.Resume(ctx, "dec")
	if err != nil || rr.Chunks != chunks {
		t.Fatalf("resume: %v (%d chunks, want %d)", err, rr.Chunks, chunks)
	}
	mem2, err := rr.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem2)
	res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: rr.Session, Position: chunks * 4, Queries: queries(r, 64, 3)}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("cycle after resume: %v %v", err, res[0].Err)
	}
	last := uint32((chunks - 1) / 64)
	found := false
	for _, ps := range res[0].Pages {
		found = found || ps.Page == last
	}
	if !found {
		t.Fatalf("the last page %d is not in the resident set %v", last, res[0].Pages)
	}
	checkPages(t, &l, &rr.Region.RegionDesc, mem2, seed, chunks, res[0].Pages)
}

// An APPEND that wrote pages and then failed leaves them in the store at a
// newer generation than the session counts; after CLOSE (kept) and RESUME
// the same chunks can be appended again, and read back.
func TestAppendAfterFailedWriteSurvivesResume(t *testing.T) {
	rd, c := startDialed(t)
	ctx := context.Background()
	l := testLayout(32)
	op, err := c.Open(ctx, &proto.Open{Name: "half", Persist: true, Layout: l, Policy: proto.Policy{KMax: 8}})
	if err != nil {
		t.Fatal(err)
	}
	op.Region.Close()
	r := rand.New(rand.NewPCG(11, 12))
	const seed = 21
	appendAll(t, c, op.Session, &l, seed, 0, 100, r)
	// What a failed APPEND of chunks 100..299 leaves behind: pages written
	// (pages 1..4), chunks not counted.
	rd.d.mu.Lock()
	s := rd.d.sessions[op.Session]
	rd.d.mu.Unlock()
	const n = 200
	size, _ := l.PayloadBytes(n)
	payload := make([]byte, size)
	synth.FillAppend(&l, seed, 100, n, payload)
	s.mu.Lock()
	for i := uint64(0); i < n; {
		ch := 100 + i
		k := min(n-i, 64-ch%64)
		run := tiers.ChunkRun{Payload: payload, N: n, From: int(i), Count: int(k), PageChunk: int(ch % 64)}
		if err := rd.d.writeRun(s, uint32(ch/64), run); err != nil {
			s.mu.Unlock()
			t.Fatal(err)
		}
		i += k
	}
	s.mu.Unlock()
	if err := c.CloseSession(ctx, op.Session, false); err != nil {
		t.Fatal(err)
	}
	rr, err := c.Resume(ctx, "half")
	if err != nil || rr.Chunks != 100 {
		t.Fatalf("resume: %v, %d chunks", err, rr.Chunks)
	}
	mem, err := rr.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	appendAll(t, c, rr.Session, &l, seed, 100, 300, r)
	res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: rr.Session, Position: 1200, Queries: queries(r, 64, 3)}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("cycle: %v %v", err, res[0].Err)
	}
	checkPages(t, &l, &rr.Region.RegionDesc, mem, seed, 300, res[0].Pages)
}

// Connections still in the kernel's accept backlog when the daemon shuts
// down are answered SHUTTING_DOWN like every other, not reset by the
// listener's close: a client must always learn why it was turned away.
func TestShutdownAnswersTheAcceptBacklog(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	rd := start(t, cfg)
	c := dial(t, cfg.Socket) // Run is serving
	c.Close()
	const n = 48
	conns := dialRaw(t, cfg.Socket, n)
	rd.stop() // at once: most of them are not accepted yet
	for i, uc := range conns {
		_ = uc.SetReadDeadline(time.Now().Add(20 * time.Second))
		f, err := proto.NewConn(uc, 1<<20).ReadFrame()
		if err != nil {
			t.Errorf("connection %d: %v, want a SHUTTING_DOWN frame", i, err)
			continue
		}
		var eb proto.ErrorBody
		if !f.IsError() || eb.Decode(f.Body) != nil || eb.Code != proto.CodeShuttingDown {
			t.Errorf("connection %d: frame %+v, want SHUTTING_DOWN", i, f.Header)
		}
	}
	rd.shutdown(t)
}

// dialRaw makes n connections to socket that send nothing (no HELLO);
// they close when the test ends.
func dialRaw(t *testing.T, socket string, n int) []*net.UnixConn {
	t.Helper()
	conns := make([]*net.UnixConn, 0, n)
	for range n {
		uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { uc.Close() })
		conns = append(conns, uc)
	}
	return conns
}

// Under socket activation systemd holds the listening socket: a connection
// still in its backlog when the daemon stops waits there for the next start
// (systemd starts the daemon for it), so the stopping daemon must leave it
// alone rather than accept it only to refuse it with SHUTTING_DOWN.
func TestShutdownLeavesAnActivatedBacklog(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	d, err := New(cfg, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	d.activated = true    // as if systemd had passed the socket
	f, err := d.ln.File() // systemd's own descriptor of the socket
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Queued before Run accepts anything; Run stops at once.
	const n = 128
	dialRaw(t, cfg.Socket, n)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Run(ctx); err != nil {
		t.Errorf("Run: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	// The next daemon's listener finds the backlog the old one left.
	l, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ul := l.(*net.UnixListener)
	left := 0
	for {
		_ = ul.SetDeadline(time.Now().Add(200 * time.Millisecond))
		c, err := ul.Accept()
		if err != nil {
			break
		}
		c.Close()
		left++
	}
	if left == 0 {
		t.Fatalf("none of %d queued connections left in systemd's socket after shutdown: the stopping daemon took them", n)
	}
	t.Logf("%d of %d queued connections left for the next start", left, n)
}
