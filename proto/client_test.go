package proto

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func dial(t *testing.T, s *testServer) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, s.path, &Options{ClientName: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestClientEndToEnd(t *testing.T) {
	s := newTestServer(t)
	c := dial(t, s)
	ctx := context.Background()

	h := c.Hello()
	if c.Version() != 1 || h.Server != "test-server" || h.Limits.StagingSize != testStagingSize || h.InstanceID[0] != 0xfe {
		t.Fatalf("hello %+v", h)
	}
	if len(c.Staging()) != testStagingSize {
		t.Fatalf("staging mapped %d bytes", len(c.Staging()))
	}
	if got, err := c.Ping(ctx, []byte("abc")); err != nil || string(got) != "abc" {
		t.Fatalf("ping %q %v", got, err)
	}

	lay := testLayout()
	lay.ReserveSlots = 4
	op, err := c.Open(ctx, &Open{Name: "s", Model: "m", Layout: lay})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Region.Close()
	reserve, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer Unmap(reserve)
	if uint64(len(reserve)) != lay.PageBytes()*4 || len(op.Region.Layers) != len(lay.Layers) {
		t.Fatalf("region %+v", op.Region.RegionDesc)
	}
	if op.Region.Kind != RegionMemfd || op.Region.Device != NoDevice {
		t.Fatalf("region kind %v on device %#x, want memfd / NoDevice", op.Region.Kind, op.Region.Device)
	}

	// Staged append: payload through the staging memfd, checked through
	// the region memfd the server copied it into.
	n := uint64(3)
	plen, _ := lay.PayloadBytes(n)
	payload := make([]byte, plen)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	if err := c.WriteStaging(1000, payload); err != nil {
		t.Fatal(err)
	}
	keys := make([]byte, 3*3*132)
	chunks, err := c.Append(ctx, &Append{Session: op.Session, Count: uint32(n), Offset: 1000, Length: plen, Keys: keys})
	if err != nil || chunks != 3 {
		t.Fatalf("append: %d %v", chunks, err)
	}
	if !bytes.Equal(reserve[:plen], payload) {
		t.Fatal("staged payload did not arrive")
	}
	inline := bytes.Repeat([]byte{0x5a}, int(lay.ChunkBytes()))
	if chunks, err = c.Append(ctx, &Append{Session: op.Session, FirstChunk: 3, Count: 1, Inline: true, Payload: inline, Keys: keys[:3*132]}); err != nil || chunks != 4 {
		t.Fatalf("inline append: %d %v", chunks, err)
	}
	if !bytes.Equal(reserve[plen:plen+uint64(len(inline))], inline) {
		t.Fatal("inline payload did not arrive")
	}
	if err := c.WriteStaging(testStagingSize-1, []byte{1, 2}); !errors.Is(err, &Error{Code: CodeLimitExceeded}) {
		t.Fatalf("staging overflow: %v", err)
	}

	// Typed errors from error frames.
	_, err = c.Append(ctx, &Append{Session: op.Session, FirstChunk: 9, Count: 1, Inline: true, Payload: inline})
	var pe *Error
	if !errors.As(err, &pe) || pe.Code != CodeChunkGap {
		t.Fatalf("gap: %v", err)
	}
	if _, err := c.Open(ctx, &Open{Layout: Layout{}}); !errors.Is(err, &Error{Code: CodeBadLayout}) {
		t.Fatalf("bad layout: %v", err)
	}

	// A batch with one good and one unknown session.
	res, err := c.Cycle(ctx, []CycleEntry{
		{Session: op.Session, Step: 64, Position: 100, Queries: [][]byte{make([]byte, 8), nil, nil}},
		{Session: 999, Step: 64, Position: 100, Queries: [][]byte{nil}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || res[0].Lease != 65 || res[0].Counters.Chunks != 4 || res[0].Pages[0] != (PageSlot{Page: 2, Slot: 3}) || res[0].Counters.ScoreMicros != 8 {
		t.Fatalf("result 0: %+v", res[0])
	}
	if !errors.Is(res[1].Err, &Error{Code: CodeUnknownSession}) {
		t.Fatalf("result 1: %+v", res[1])
	}
	if err := c.Release(ctx, res[0].Lease); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx)
	if err != nil || st.Sessions != 1 || st.Protocol != 1 {
		t.Fatalf("status %+v %v", st, err)
	}
	if in, err := c.Inspect(ctx, AdminTarget{Name: "s"}); err != nil || in.Session.Chunks != 4 {
		t.Fatalf("inspect: %+v %v", in, err)
	}
	if err := c.CloseSession(ctx, op.Session, true); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseSession(ctx, op.Session, true); !errors.Is(err, &Error{Code: CodeUnknownSession}) {
		t.Fatalf("second close: %v", err)
	}

	// Another connection cannot touch the first one's sessions.
	op2, err := c.Open(ctx, &Open{Layout: lay})
	if err != nil {
		t.Fatal(err)
	}
	op2.Region.Close()
	other := dial(t, s)
	if err := other.CloseSession(ctx, op2.Session, false); !errors.Is(err, &Error{Code: CodeNotOwner}) {
		t.Fatalf("foreign close: %v", err)
	}
	other.Close()
	if err := c.CloseSession(ctx, op2.Session, true); err != nil {
		t.Fatal(err)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ping(ctx, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
	op.Region.Close()
	Unmap(reserve)
	reserve = nil
	s.dropConns()
	// All fds we received (staging, regions) are closed again, and so are
	// the server's once its connections are gone.
	deadline := time.Now().Add(2 * time.Second)
	for memfdsOpen(t, "") > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := memfdsOpen(t, ""); n > 0 {
		t.Fatalf("%d memfds still open", n)
	}
}

// TestClientConcurrent: many goroutines share one client; the server
// answers out of order; each call must get its own reply.
func TestClientConcurrent(t *testing.T) {
	s := newTestServer(t)
	c := dial(t, s)
	ctx := context.Background()
	var wg sync.WaitGroup
	errc := make(chan error, 32)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range 60 {
				var msg []byte
				if rng.IntN(10) == 0 {
					msg = fmt.Appendf(nil, "sleep:%d:g%d-i%d", rng.IntN(5), g, i)
				} else {
					msg = make([]byte, rng.IntN(16<<10))
					for j := range msg {
						msg[j] = byte(rng.Uint32())
					}
				}
				got, err := c.Ping(ctx, msg)
				if err != nil {
					errc <- err
					return
				}
				if !bytes.Equal(got, msg) {
					errc <- fmt.Errorf("goroutine %d call %d got another call's reply", g, i)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
}

func TestClientContext(t *testing.T) {
	s := newTestServer(t)
	c := dial(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Ping(ctx, []byte("sleep:300:slow")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow ping: %v", err)
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Fatalf("cancel took %v", d)
	}
	// The late reply is dropped; the client keeps working.
	if got, err := c.Ping(context.Background(), []byte("fast")); err != nil || string(got) != "fast" {
		t.Fatalf("after cancel: %q %v", got, err)
	}
	time.Sleep(350 * time.Millisecond)
	if got, err := c.Ping(context.Background(), []byte("after late reply")); err != nil || string(got) != "after late reply" {
		t.Fatalf("after late reply: %q %v", got, err)
	}
	done, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := c.Ping(done, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

// TestClientSessionOps covers the remaining typed methods: RESUME (the
// same region through a second connection's fd), COMMIT, PERSIST and the
// admin ops.
func TestClientSessionOps(t *testing.T) {
	s := newTestServer(t)
	c := dial(t, s)
	ctx := context.Background()
	lay := testLayout()
	lay.ReserveSlots = 2
	op, err := c.Open(ctx, &Open{Name: "kept", Model: "lsa", Layout: lay})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Region.Close()
	mem, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer Unmap(mem)
	copy(op.Region.Row(mem, 2, 1), "decoded chunk bytes")
	if n, err := c.Commit(ctx, &Commit{Session: op.Session, Count: 5, Keys: make([]byte, 5*3*132)}); err != nil || n != 5 {
		t.Fatalf("commit: %d %v", n, err)
	}
	if _, err := c.Commit(ctx, &Commit{Session: op.Session, FirstChunk: 2, Count: 1}); !errors.Is(err, &Error{Code: CodeDuplicateChunk}) {
		t.Fatalf("duplicate commit: %v", err)
	}
	if err := c.Persist(ctx, op.Session); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Open(ctx, &Open{Name: "kept", Layout: lay}); !errors.Is(err, &Error{Code: CodeSessionExists}) {
		t.Fatalf("second open: %v", err)
	}

	c2 := dial(t, s)
	rr, err := c2.Resume(ctx, "kept")
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Region.Close()
	if rr.Session != op.Session || rr.Chunks != 5 || !rr.Persist || rr.Model != "lsa" || !reflect.DeepEqual(rr.Layout, lay) {
		t.Fatalf("resume reply %+v", rr)
	}
	mem2, err := rr.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer Unmap(mem2)
	if got := string(rr.Region.Row(mem2, 2, 1)[:19]); got != "decoded chunk bytes" {
		t.Fatalf("resumed region holds %q", got)
	}
	if _, err := c2.Resume(ctx, "nope"); !errors.Is(err, &Error{Code: CodeUnknownSession}) {
		t.Fatalf("resume unknown: %v", err)
	}

	ss, err := c2.Sessions(ctx)
	if err != nil || len(ss.Sessions) != 1 || ss.Sessions[0].Name != "kept" || ss.Sessions[0].Chunks != 5 {
		t.Fatalf("sessions %+v %v", ss, err)
	}
	in, err := c2.Inspect(ctx, AdminTarget{Name: "kept"})
	if err != nil || in.Session.ID != op.Session || !reflect.DeepEqual(in.Layout, lay) {
		t.Fatalf("inspect %+v %v", in, err)
	}
	ev, err := c2.Evict(ctx, AdminTarget{Session: op.Session})
	if err != nil || len(ev.Sessions) != 1 || ev.Sessions[0] != op.Session || ev.Bytes != op.Region.Size {
		t.Fatalf("evict %+v %v", ev, err)
	}
	if _, err := c2.Inspect(ctx, AdminTarget{Session: op.Session}); !errors.Is(err, &Error{Code: CodeUnknownSession}) {
		t.Fatalf("inspect after evict: %v", err)
	}
	if _, err := c2.Inspect(ctx, AdminTarget{}); !errors.Is(err, &Error{Code: CodeBadRequest}) {
		t.Fatalf("inspect with no target: %v", err)
	}
}

// TestClientLateFDReply: a reply that carries a region fd and arrives after
// its caller gave up must not leak the fd.
func TestClientLateFDReply(t *testing.T) {
	s := newTestServer(t)
	c := dial(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	lay := testLayout()
	lay.ReserveSlots = 1
	if _, err := c.Open(ctx, &Open{Name: "slow", Layout: lay}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow open: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // the reply, with its fd, arrives now
	if _, err := c.Ping(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	// The test server's sessions are numbered from 1; closing it drops the
	// server's own descriptor, so only a leaked client copy would remain.
	if err := c.CloseSession(context.Background(), 1, true); err != nil {
		t.Fatal(err)
	}
	if n := memfdsOpen(t, "region"); n != 0 {
		t.Fatalf("%d region memfds open: the late reply's fd leaked", n)
	}
}

func TestClientServerGone(t *testing.T) {
	s := newTestServer(t)
	c := dial(t, s)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Ping(context.Background(), []byte("sleep:500:never answered"))
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	s.dropConns()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("pending call: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pending call not failed when the server went away")
	}
	if _, err := c.Ping(context.Background(), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("later call: %v", err)
	}
	if c.Err() == nil {
		t.Fatal("Err() nil after the connection died")
	}
}

func TestClientVersionMismatch(t *testing.T) {
	s := newTestServer(t)
	_, err := Dial(context.Background(), s.path, &Options{MinVersion: 2, MaxVersion: 3})
	if !errors.Is(err, &Error{Code: CodeUnsupportedVersion}) {
		t.Fatalf("dial with versions 2..3: %v", err)
	}
}

func TestDialNoServer(t *testing.T) {
	if _, err := Dial(context.Background(), t.TempDir()+"/none.sock", nil); err == nil {
		t.Fatal("dial to a missing socket succeeded")
	}
}
