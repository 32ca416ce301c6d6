package daemon

import (
	"context"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/internal/synth"
	"github.com/flashmemory/flashmemory/proto"
)

// rawCall writes one request on a raw connection and reads its reply,
// closing any files that came with it.
func rawCall(t *testing.T, uc *net.UnixConn, id uint64, op proto.Op, req, reply proto.Message) {
	t.Helper()
	body, err := req.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.WriteFrame(uc, proto.Header{Version: 1, Op: op, ID: id}, body); err != nil {
		t.Fatal(err)
	}
	f, err := proto.ReadFrame(uc, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.CloseFiles()
	if f.Flags&proto.FlagError != 0 {
		var e proto.ErrorBody
		_ = e.Decode(f.Body)
		t.Fatalf("%s: error %v %s", op, e.Code, e.Msg)
	}
	if reply != nil {
		if err := reply.Decode(f.Body); err != nil {
			t.Fatal(err)
		}
	}
}

// A client that pipelines CYCLEs and never reads the replies must not make
// its sessions' locks unavailable to other connections (STATUS sums every
// session's footprint, the lease janitor visits every session).
func TestReviewUnreadCycleRepliesDoNotWedgeOthers(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)

	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: rd.d.Addr(), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	_ = uc.SetReadBuffer(4096)
	rawCall(t, uc, 1, proto.OpHello, &proto.Hello{MinVersion: 1, MaxVersion: 1, ClientName: "hostile"}, nil)
	l := testLayout(8)
	var or proto.OpenReply
	rawCall(t, uc, 2, proto.OpOpen, &proto.Open{Layout: l}, &or)
	r := rand.New(rand.NewPCG(1, 2))
	const n = 64
	size, _ := l.PayloadBytes(n)
	payload := make([]byte, size)
	synth.FillAppend(&l, 1, 0, n, payload)
	keys := synth.Keys(r, int(l.TargetLayers), int(l.KeyBytes), n)
	rawCall(t, uc, 3, proto.OpAppend, &proto.Append{Session: or.Session, Count: n, Inline: true, Payload: payload, Keys: keys}, nil)

	body, err := (&proto.Cycle{Entries: []proto.CycleEntry{{Session: or.Session, Position: n * 4, Queries: queries(r, 64, 3)}}}).AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for id := uint64(10); id < 200000; id++ {
			if proto.WriteFrame(uc, proto.Header{Version: 1, Op: proto.OpCycle, ID: id}, body) != nil {
				return
			}
		}
	}()
	time.Sleep(2 * time.Second) // the daemon's writes to uc now block

	c := dial(t, rd.d.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Status(ctx); err != nil {
		t.Fatalf("STATUS from another client while one client does not read: %v", err)
	}
	uc.Close()
}

// A layout whose cycle spans more tail pages than the reserve has slots
// must be refused without building a tail of billions of pages.
func TestReviewHugeCycleStepsTail(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)
	c := dial(t, rd.d.Addr())
	ctx := context.Background()
	l := testLayout(8)
	l.CycleSteps = 1<<32 - 1
	op, err := c.Open(ctx, &proto.Open{Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	appendAll(t, c, op.Session, &l, 1, 0, 64, r)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: 256, Queries: queries(r, 64, 3)}})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err == nil || res[0].Err.Code != proto.CodeNoSpace {
		t.Fatalf("cycle with a 2^32-step tail: %+v, want NO_SPACE", res[0].Err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 64<<20 {
		t.Fatalf("one cycle allocated %d MB", d>>20)
	}
}

// Loading a persisted session that is already live (two RESUMEs racing
// past the by-name lookup) must leave the live one registered.
func TestReviewConcurrentResumeKeepsLiveSession(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)
	c := dial(t, rd.d.Addr())
	ctx := context.Background()
	l := testLayout(8)
	op, err := c.Open(ctx, &proto.Open{Name: "p", Persist: true, Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CloseSession(ctx, op.Session, false); err != nil {
		t.Fatal(err)
	}
	d := rd.d
	fake := func() *conn {
		return &conn{d: d, cred: Cred{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}, sessions: map[uint64]*session{}, leases: map[uint64]*lease{}}
	}
	s1, err := d.loadSession("p", fake())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.loadSession("p", fake()); err == nil {
		t.Fatal("second load of a live session succeeded")
	}
	d.mu.Lock()
	got := d.sessions[s1.id]
	d.mu.Unlock()
	if got != s1 {
		t.Fatalf("live session %d is no longer registered (%p, want %p)", s1.id, got, s1)
	}
}

// An APPEND whose keys the model rejects must fail with BAD_REQUEST before
// any page is written: pages written for chunks the session never counted
// made the session unappendable once persisted and resumed.
func TestReviewRejectedKeysWriteNothing(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.Indexer.Text = []TextModelConfig{{Name: "text"}}
	rd := start(t, cfg)
	defer rd.shutdown(t)
	sc := rd.d.models["text"]
	c := dial(t, rd.d.Addr())
	ctx := context.Background()
	l := testLayout(8)
	l.KeyBytes, l.TargetLayers = uint32(sc.KeyBytes()), uint32(len(sc.Layers()))
	op, err := c.Open(ctx, &proto.Open{Name: "tm", Model: "text", Persist: true, Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	const n = 64
	size, _ := l.PayloadBytes(n)
	payload := make([]byte, size)
	synth.FillAppend(&l, 1, 0, n, payload)
	kb, _ := l.KeysBytes(n)
	bad := make([]byte, kb)
	for i := range bad {
		bad[i] = 0xff // NaN scales
	}
	_, err = c.Append(ctx, &proto.Append{Session: op.Session, Count: n, Inline: true, Payload: payload, Keys: bad})
	if proto.CodeOf(err) != proto.CodeBadRequest {
		t.Fatalf("APPEND with rejected keys: %v, want BAD_REQUEST", err)
	}
	if err := c.CloseSession(ctx, op.Session, false); err != nil {
		t.Fatal(err)
	}
	rr, err := c.Resume(ctx, "tm")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Append(ctx, &proto.Append{Session: rr.Session, Count: n, Inline: true, Payload: payload, Keys: make([]byte, kb)}); err != nil || got != n {
		t.Fatalf("APPEND after a rejected one and a resume: %d, %v", got, err)
	}
}

// A RESUME that finds a detached session in memory just as the janitor
// moves it to SSD (detached_ttl) must not serve the dropped session (its
// region is gone): it resumes from SSD instead.
func TestReviewResumeRacesDetachedExpiry(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)
	d := rd.d
	ctx := context.Background()
	l := testLayout(8)
	c1 := dial(t, d.Addr())
	op, err := c1.Open(ctx, &proto.Open{Name: "p", Persist: true, Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 6))
	appendAll(t, c1, op.Session, &l, 1, 0, 128, r)
	c1.Close()
	d.mu.Lock()
	s := d.byName["p"]
	d.mu.Unlock()
	for deadline := time.Now().Add(5 * time.Second); ; {
		s.mu.Lock()
		detached := s.conn == nil
		s.mu.Unlock()
		if detached {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("session not detached")
		}
		time.Sleep(10 * time.Millisecond)
	}

	c2 := dial(t, d.Addr())
	s.mu.Lock()
	type res struct {
		rr  *proto.ResumeReply
		err error
	}
	done := make(chan res, 1)
	go func() {
		rr, err := c2.Resume(ctx, "p")
		done <- res{rr, err}
	}()
	time.Sleep(300 * time.Millisecond) // RESUME has found s and waits for its lock
	// What dropSessionIf does for an expired detached session.
	if err := d.store.Flush(ctx, s.id); err != nil {
		t.Fatal(err)
	}
	if err := d.writeMetaLocked(ctx, s); err != nil {
		t.Fatal(err)
	}
	d.unregisterLocked(s)
	s.destroyRegion(d)
	_ = d.store.Mirror().DeleteSession(ctx, s.id)
	s.req = nil
	s.mu.Unlock()

	got := <-done
	if got.err != nil {
		t.Fatalf("RESUME: %v", got.err)
	}
	if got.rr.Chunks != 128 {
		t.Fatalf("resumed %d chunks, want 128", got.rr.Chunks)
	}
}

// RESUME of a session detached in memory counts against
// max_sessions_per_conn like OPEN and a RESUME from SSD do.
func TestReviewResumeInMemoryHonoursPerConnLimit(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.Limits.MaxSessionsPerConn = 1
	rd := start(t, cfg)
	defer rd.shutdown(t)
	ctx := context.Background()
	l := testLayout(8)
	a := dial(t, rd.d.Addr())
	if _, err := a.Open(ctx, &proto.Open{Name: "a", Persist: true, Layout: l}); err != nil {
		t.Fatal(err)
	}
	b := dial(t, rd.d.Addr())
	if _, err := b.Open(ctx, &proto.Open{Name: "b", Persist: true, Layout: l}); err != nil {
		t.Fatal(err)
	}
	b.Close()
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err = a.Resume(ctx, "b"); proto.CodeOf(err) != proto.CodeNotOwner {
			break // b's connection has ended
		}
	}
	if proto.CodeOf(err) != proto.CodeLimitExceeded {
		t.Fatalf("second session on a connection limited to 1: %v, want LIMIT_EXCEEDED", err)
	}
}

// The region fd an OPEN or RESUME hands back must stay valid until the
// reply is written, even if another connection of the owner evicts the
// session first: a closed fd number can be reused by another client's
// region before SCM_RIGHTS sends it.
func TestReviewOpenReplyFDOutlivesEvict(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)
	d := rd.d
	c := &conn{d: d, cred: Cred{UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}, sessions: map[uint64]*session{}, leases: map[uint64]*lease{}}
	reply, fds, err := c.open(&proto.Open{Name: "e", Persist: true, Layout: testLayout(8)})
	if err != nil {
		t.Fatal(err)
	}
	id := reply.(*proto.OpenReply).Session
	d.mu.Lock()
	s := d.sessions[id]
	d.mu.Unlock()
	if err := d.dropSession(s, false); err != nil { // EVICT from another connection
		t.Fatal(err)
	}
	for _, fd := range fds {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatalf("OPEN's fd %d after the session was evicted: %v", fd, err)
		}
		unix.Close(fd)
	}
	rr, fds, err := c.resume(&proto.Resume{Name: "e"})
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	s = d.sessions[rr.(*proto.ResumeReply).Session]
	d.mu.Unlock()
	if err := d.dropSession(s, true); err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatalf("RESUME's fd %d after the session was evicted: %v", fd, err)
		}
		unix.Close(fd)
	}
}

// A query the model cannot parse is the client's error: BAD_REQUEST, not
// INTERNAL.
func TestReviewBadTextQueryIsBadRequest(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.Indexer.Text = []TextModelConfig{{Name: "text"}}
	rd := start(t, cfg)
	defer rd.shutdown(t)
	sc := rd.d.models["text"]
	c := dial(t, rd.d.Addr())
	ctx := context.Background()
	l := testLayout(8)
	l.KeyBytes, l.TargetLayers = uint32(sc.KeyBytes()), uint32(len(sc.Layers()))
	op, err := c.Open(ctx, &proto.Open{Model: "text", Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	const n = 64
	size, _ := l.PayloadBytes(n)
	payload := make([]byte, size)
	synth.FillAppend(&l, 1, 0, n, payload)
	kb, _ := l.KeysBytes(n)
	if _, err := c.Append(ctx, &proto.Append{Session: op.Session, Count: n, Inline: true, Payload: payload, Keys: make([]byte, kb)}); err != nil {
		t.Fatal(err)
	}
	q := make([]byte, sc.QueryBytes())
	for i := range q {
		q[i] = 0xff // NaN
	}
	res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Queries: [][]byte{q}}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err == nil || res[0].Err.Code != proto.CodeBadRequest {
		t.Fatalf("CYCLE with a NaN text query: %v, want BAD_REQUEST", res[0].Err)
	}
}

// A second HELLO gets HANDSHAKE_REQUIRED whatever versions it names
// (protocol section 6).
func TestReviewSecondHelloIsHandshakeRequired(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: rd.d.Addr(), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	rawCall(t, uc, 1, proto.OpHello, &proto.Hello{MinVersion: 1, MaxVersion: 1, ClientName: "x"}, nil)
	body, _ := (&proto.Hello{MinVersion: 7, MaxVersion: 9, ClientName: "x"}).AppendBinary(nil)
	if err := proto.WriteFrame(uc, proto.Header{Version: 1, Op: proto.OpHello, ID: 2}, body); err != nil {
		t.Fatal(err)
	}
	f, err := proto.ReadFrame(uc, 0)
	if err != nil {
		t.Fatal(err)
	}
	var e proto.ErrorBody
	if f.Flags&proto.FlagError == 0 || e.Decode(f.Body) != nil || e.Code != proto.CodeHandshakeRequired {
		t.Fatalf("second HELLO: flags %#x, error %v %q; want HANDSHAKE_REQUIRED", f.Flags, e.Code, e.Msg)
	}
}

// A tail page nobody wrote yet is handed out in a slot that reads as zeros
// (like the mirror's fresh page), not as the bytes of the page evicted from
// it: the decoder writes its cells in place and COMMIT then marks the slot
// as holding the page.
func TestReviewNewTailSlotReadsZeros(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)
	c := dial(t, rd.d.Addr())
	ctx := context.Background()
	l := testLayout(8)
	op, err := c.Open(ctx, &proto.Open{Layout: l, Policy: proto.Policy{KMax: 4}})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	r := rand.New(rand.NewPCG(7, 8))
	chunks := uint64(1024)
	appendAll(t, c, op.Session, &l, 1, 0, chunks, r)
	for round := 0; round < 12; round++ {
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: chunks * 4, Queries: queries(r, 64, 3)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("cycle: %v %v", err, res[0].Err)
		}
		for _, ps := range res[0].Tail {
			if uint64(ps.Page)*64 < chunks {
				continue // holds appended chunks
			}
			for ly := range l.Layers {
				for i, b := range op.Region.Row(mem, ly, ps.Slot) {
					if b != 0 {
						t.Fatalf("round %d: new tail page %d slot %d layer %d: byte %d is %#x, want 0", round, ps.Page, ps.Slot, ly, i, b)
					}
				}
			}
		}
		if err := c.Release(ctx, res[0].Lease); err != nil {
			t.Fatal(err)
		}
		appendAll(t, c, op.Session, &l, 1, chunks, chunks+64, r)
		chunks += 64
	}
}

// More reserve slots than a region can have is the client's error, not an
// internal one.
func TestReviewTooManySlotsIsNotInternal(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)
	c := dial(t, rd.d.Addr())
	l := proto.Layout{ChunksPerPage: 1, KeyBytes: 132, TargetLayers: 3, CycleSteps: 1, ReserveSlots: 1<<20 + 1,
		Layers: []proto.LayerLayout{{RowBytes: 8, Segments: []uint32{8}}}}
	_, err := c.Open(context.Background(), &proto.Open{Layout: l})
	if code := proto.CodeOf(err); code == proto.CodeInternal || err == nil {
		t.Fatalf("OPEN with %d slots: %v", l.ReserveSlots, err)
	}
}

// An APPEND past the indexer's MaxChunks is refused before any page is
// written, like one past max_session_bytes.
func TestReviewMaxChunksCheckedBeforeWriting(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)
	d := rd.d
	c := dial(t, d.Addr())
	ctx := context.Background()
	l := testLayout(8)
	op, err := c.Open(ctx, &proto.Open{Name: "mc", Persist: true, Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	s := d.sessions[op.Session]
	d.mu.Unlock()
	s.mu.Lock()
	p := s.req.Policy()
	p.MaxChunks = 64 // stands for the 4M-chunk default
	if s.req, err = indexer.NewRequest(s.scorer, p); err != nil {
		t.Fatal(err)
	}
	s.mu.Unlock()
	r := rand.New(rand.NewPCG(9, 10))
	const n = 128
	size, _ := l.PayloadBytes(n)
	payload := make([]byte, size)
	synth.FillAppend(&l, 1, 0, n, payload)
	keys := synth.Keys(r, int(l.TargetLayers), int(l.KeyBytes), n)
	if _, err := c.Append(ctx, &proto.Append{Session: op.Session, Count: n, Inline: true, Payload: payload, Keys: keys}); proto.CodeOf(err) != proto.CodeLimitExceeded {
		t.Fatalf("APPEND past MaxChunks: %v, want LIMIT_EXCEEDED", err)
	}
	if err := c.CloseSession(ctx, op.Session, false); err != nil {
		t.Fatal(err)
	}
	rr, err := c.Resume(ctx, "mc") // default policy again
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Append(ctx, &proto.Append{Session: rr.Session, Count: n, Inline: true, Payload: payload, Keys: keys}); err != nil || got != n {
		t.Fatalf("APPEND after a refused one and a resume: %d, %v", got, err)
	}
}

// An EVICT (by another connection of the owner) racing a RESUME from SSD
// must not leave a region behind: the leaked region made every later
// RESUME of the session fail (region exists) until a restart.
func TestReviewResumeRacingEvictLeaksNoRegion(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)
	d := rd.d
	ctx := context.Background()
	a := dial(t, d.Addr())
	op, err := a.Open(ctx, &proto.Open{Name: "p", Persist: true, Layout: testLayout(8)})
	if err != nil {
		t.Fatal(err)
	}
	id := op.Session
	if err := a.CloseSession(ctx, id, false); err != nil {
		t.Fatal(err)
	}
	b := dial(t, d.Addr())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _ = b.Evict(ctx, proto.AdminTarget{Session: id})
		}
	}()
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); {
		rr, err := a.Resume(ctx, "p")
		if err != nil {
			if proto.CodeOf(err) == proto.CodeInternal {
				break // the leak happened
			}
			continue
		}
		_ = a.CloseSession(ctx, rr.Session, false)
	}
	close(stop)
	<-done
	if used := d.reserve.Used(); used != 0 {
		t.Errorf("no session live, reserve holds %d B", used)
	}
	if _, err := a.Resume(ctx, "p"); err != nil {
		t.Fatalf("RESUME after the race: %v", err)
	}
}

// One entry's bad query fails that entry only, not its batch mates.
func TestBadEntryDoesNotFailItsBatch(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.Indexer.Text = []TextModelConfig{{Name: "text"}}
	rd := start(t, cfg)
	defer rd.shutdown(t)
	sc := rd.d.models["text"]
	c := dial(t, rd.d.Addr())
	ctx := context.Background()
	l := testLayout(8)
	l.KeyBytes, l.TargetLayers = uint32(sc.KeyBytes()), uint32(len(sc.Layers()))
	var ids []uint64
	for i := 0; i < 2; i++ {
		op, err := c.Open(ctx, &proto.Open{Model: "text", Layout: l})
		if err != nil {
			t.Fatal(err)
		}
		op.Region.Close()
		const n = 64
		size, _ := l.PayloadBytes(n)
		payload := make([]byte, size)
		synth.FillAppend(&l, 1, 0, n, payload)
		kb, _ := l.KeysBytes(n)
		if _, err := c.Append(ctx, &proto.Append{Session: op.Session, Count: n, Inline: true, Payload: payload, Keys: make([]byte, kb)}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, op.Session)
	}
	good := make([]byte, sc.QueryBytes())
	bad := make([]byte, sc.QueryBytes())
	for i := range bad {
		bad[i] = 0xff // NaN
	}
	res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: ids[0], Queries: [][]byte{good}}, {Session: ids[1], Queries: [][]byte{bad}}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || len(res[0].Pages) == 0 {
		t.Fatalf("the good entry failed with its bad batch mate: %v", res[0].Err)
	}
	if res[1].Err == nil || res[1].Err.Code != proto.CodeBadRequest {
		t.Fatalf("bad entry: %v, want BAD_REQUEST", res[1].Err)
	}
}

// A cycle that fails after scoring (no free slot: the client still holds its old leases)
// must leave the indexer as it was: the retry after releasing them is the same cycle
// number, not the next one.
func TestReviewFailedCycleRollsBackSelection(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)
	c := dial(t, rd.d.Addr())
	ctx := context.Background()
	l := testLayout(20)
	op, err := c.Open(ctx, &proto.Open{Layout: l, Policy: proto.Policy{KMax: 16}})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(8, 8))
	appendAll(t, c, op.Session, &l, 1, 0, 64*64, r)
	var leases []uint64
	var last uint64
	for k := range 12 {
		q := queries(r, 64, 3)
		entry := []proto.CycleEntry{{Session: op.Session, Step: uint64(64 * k), Position: 64 * 64 * 4, Queries: q}}
		res, err := c.Cycle(ctx, entry)
		if err != nil {
			t.Fatal(err)
		}
		if res[0].Err == nil {
			last = res[0].Cycle
			leases = append(leases, res[0].Lease) // kept: their slots stay pinned
			continue
		}
		if res[0].Err.Code != proto.CodeNoSpace {
			t.Fatalf("cycle %d: %v, want NO_SPACE", k, res[0].Err)
		}
		if err := c.Release(ctx, leases...); err != nil {
			t.Fatal(err)
		}
		res, err = c.Cycle(ctx, entry)
		if err != nil || res[0].Err != nil {
			t.Fatalf("retry: %v %v", err, res[0].Err)
		}
		if res[0].Cycle != last+1 {
			t.Fatalf("retry after a failed cycle is cycle %d, want %d (the failed one must not count)", res[0].Cycle, last+1)
		}
		return
	}
	t.Fatal("no cycle ran out of slots while every lease was held")
}
