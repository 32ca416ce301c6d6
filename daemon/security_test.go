package daemon

import (
	"context"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/internal/synth"
	"github.com/flashmemory/flashmemory/proto"
)

// EVICT from another connection of the same uid only demotes an attached
// session: its owner keeps appending, cycling and releasing, and every page
// the decoder reads is still right.
func TestEvictAttachedSessionDemotes(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	rd := start(t, cfg)
	defer rd.shutdown(t)
	ctx := context.Background()
	owner, other := dial(t, cfg.Socket), dial(t, cfg.Socket)
	l := testLayout(64)
	op, err := owner.Open(ctx, &proto.Open{Layout: l, Policy: proto.Policy{KMax: 8}})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	defer op.Region.Close()
	r := rand.New(rand.NewPCG(1, 2))
	appendAll(t, owner, op.Session, &l, 9, 0, 2048, r)
	res, err := owner.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: 2048, Queries: queries(r, 64, 3)}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("cycle: %v %v", err, res[0].Err)
	}
	lease := res[0].Lease

	ev, err := other.Evict(ctx, proto.AdminTarget{Session: op.Session})
	if err != nil {
		t.Fatalf("evict: %v", err)
	}
	if !ev.Demoted || ev.Bytes == 0 {
		t.Fatalf("evict of an attached session: %+v, want demoted with bytes", ev)
	}
	// The lease and the session are still the owner's.
	checkPages(t, &l, &op.Region.RegionDesc, mem, 9, 2048, res[0].Pages)
	if err := owner.Release(ctx, lease); err != nil {
		t.Fatalf("release after evict: %v", err)
	}
	appendAll(t, owner, op.Session, &l, 9, 2048, 2304, r)
	for range 3 {
		res, err = owner.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: 2304, Queries: queries(r, 64, 3)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("cycle after evict: %v %v", err, res[0].Err)
		}
		checkPages(t, &l, &op.Region.RegionDesc, mem, 9, 2304, res[0].Pages)
		if err := owner.Release(ctx, res[0].Lease); err != nil {
			t.Fatal(err)
		}
	}
	if err := owner.CloseSession(ctx, op.Session, true); err != nil {
		t.Fatalf("close after evict: %v", err)
	}
}

// A uid may see and act on only its own sessions; root and admin_groups on
// all.
func TestMayActOn(t *testing.T) {
	a := access{admins: map[uint32]bool{50: true}}
	owner := Cred{UID: 1000, GID: 1000}
	for _, tc := range []struct {
		peer Cred
		want bool
	}{
		{Cred{UID: 1000}, true},
		{Cred{UID: 0}, true},
		{Cred{UID: 1001, GID: 1001}, false},
		{Cred{UID: 1001, GID: 50}, true},
		{Cred{UID: 1001, GID: 1001, Groups: []uint32{7, 50}}, true},
		{Cred{UID: 1001, GID: 1001, Groups: []uint32{7}}, false},
	} {
		if got := a.mayActOn(owner, tc.peer); got != tc.want {
			t.Errorf("mayActOn(%+v) = %v, want %v", tc.peer, got, tc.want)
		}
	}
	allow := access{uid: 999, groups: map[uint32]bool{60: true}}
	for _, tc := range []struct {
		peer Cred
		ok   bool
	}{
		{Cred{UID: 0}, true},
		{Cred{UID: 999}, true},
		{Cred{UID: 1001, GID: 60, Groups: []uint32{}}, true},
		{Cred{UID: 1001, GID: 1001, Groups: []uint32{60}}, true},
		{Cred{UID: 1001, GID: 1001, Groups: []uint32{61}}, false},
	} {
		if err := allow.allow(tc.peer); (err == nil) != tc.ok {
			t.Errorf("allow(%+v) = %v, want ok=%v", tc.peer, err, tc.ok)
		}
	}
}

// The peer's supplementary groups come from the kernel: a socketpair's
// SO_PEERGROUPS (or /proc) match this process's own groups.
func TestPeerGroups(t *testing.T) {
	fds, err := socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer fds[0].Close()
	defer fds[1].Close()
	cred, err := peerCred(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	if cred.Groups == nil || len(cred.Groups) != len(want) {
		t.Fatalf("peer groups %v, process groups %v", cred.Groups, want)
	}
	if pg := procGroups(int32(os.Getpid())); len(pg) != len(want) {
		t.Fatalf("/proc groups %v, process groups %v", pg, want)
	}
}

func socketpair() ([2]*net.UnixConn, error) {
	var out [2]*net.UnixConn
	a, b, err := unixSocketpair()
	if err != nil {
		return out, err
	}
	out[0], out[1] = a, b
	return out, nil
}

// MODELS names the default model and the sizes a client needs; UNKNOWN_MODEL
// names the models there are.
func TestModelsOp(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	rd := start(t, cfg)
	defer rd.shutdown(t)
	ctx := context.Background()
	c := dial(t, cfg.Socket)
	m, err := c.Models(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m.DefaultModel != "test" || m.Limits.MaxConns != cfg.Limits.MaxConns || m.Limits.LeaseTimeout != 300 {
		t.Fatalf("models reply %+v", m)
	}
	var found bool
	for _, mi := range m.Models {
		if mi.Name == "test" {
			found = true
			if mi.Kind != kindLSA || mi.QueryBytes != 128 || mi.KeyBytes != 132 || mi.TargetLayers != 3 || !mi.Default {
				t.Fatalf("model test: %+v", mi)
			}
		}
	}
	if !found {
		t.Fatalf("model test not listed: %+v", m.Models)
	}
	_, err = c.Open(ctx, &proto.Open{Model: "lsa", Layout: testLayout(8)})
	if proto.CodeOf(err) != proto.CodeUnknownModel || !strings.Contains(err.Error(), "test") {
		t.Fatalf("open of an unknown model: %v", err)
	}
}

// Non-finite keys and queries, and positions past 2^63-1, are BAD_REQUEST.
func TestNonFiniteRejected(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	rd := start(t, cfg)
	defer rd.shutdown(t)
	ctx := context.Background()
	c := dial(t, cfg.Socket)
	l := testLayout(16)
	op, err := c.Open(ctx, &proto.Open{Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	op.Region.Close()
	r := rand.New(rand.NewPCG(3, 4))
	pb, _ := l.PayloadBytes(1)
	nan := synth.Keys(r, 3, 132, 1)
	nan[5] = 0x7f
	_, err = c.Append(ctx, &proto.Append{Session: op.Session, Count: 1, Inline: true, Payload: make([]byte, pb), Keys: nan})
	if proto.CodeOf(err) != proto.CodeBadRequest {
		t.Fatalf("NaN key: %v", err)
	}
	inf := synth.Keys(r, 3, 132, 1)
	binary.LittleEndian.PutUint32(inf[128:], math.Float32bits(float32(math.Inf(1))))
	_, err = c.Append(ctx, &proto.Append{Session: op.Session, Count: 1, Inline: true, Payload: make([]byte, pb), Keys: inf})
	if proto.CodeOf(err) != proto.CodeBadRequest {
		t.Fatalf("infinite scale: %v", err)
	}
	appendAll(t, c, op.Session, &l, 1, 0, 64, r)
	q := queries(r, 64, 3)
	binary.LittleEndian.PutUint16(q[1][10:], 0x7fc0) // bf16 NaN
	res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: 64, Queries: q}})
	if err != nil || proto.CodeOf(res[0].Err) != proto.CodeBadRequest {
		t.Fatalf("NaN query: %v %v", err, res[0].Err)
	}
	res, err = c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: 1 << 63, Queries: queries(r, 64, 3)}})
	if err != nil || proto.CodeOf(res[0].Err) != proto.CodeBadRequest || !strings.Contains(res[0].Err.Error(), "9223372036854775808") {
		t.Fatalf("position 2^63: %v %v", err, res[0].Err)
	}
}

// A connection that never sends HELLO gets HANDSHAKE_REQUIRED with request
// id 0 and is closed after limits.handshake_timeout; one holding nothing is
// closed after idle_timeout.
func TestHandshakeAndIdleTimeouts(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Limits.HandshakeTimeout = Duration(300 * time.Millisecond)
	cfg.Limits.IdleTimeout = Duration(400 * time.Millisecond)
	rd := start(t, cfg)
	defer rd.shutdown(t)
	for _, tc := range []struct {
		name  string
		hello bool
		code  proto.Code
	}{{"silent", false, proto.CodeHandshakeRequired}, {"idle", true, proto.CodeLimitExceeded}} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := net.Dial("unix", cfg.Socket)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			uc := nc.(*net.UnixConn)
			pc := proto.NewConn(uc, 1<<20)
			if tc.hello {
				if err := pc.WriteMessage(proto.Header{Version: 1, Op: proto.OpHello, ID: 1}, &proto.Hello{MinVersion: 1, MaxVersion: 1}); err != nil {
					t.Fatal(err)
				}
				f, err := pc.ReadFrame()
				if err != nil || f.IsError() {
					t.Fatalf("hello: %v", err)
				}
				f.CloseFiles()
			}
			start := time.Now()
			_ = uc.SetReadDeadline(time.Now().Add(5 * time.Second))
			f, err := pc.ReadFrame()
			if err != nil {
				t.Fatalf("want an error frame, got %v", err)
			}
			var eb proto.ErrorBody
			if !f.IsError() || f.ID != 0 || eb.Decode(f.Body) != nil || eb.Code != tc.code {
				t.Fatalf("frame %+v %+v, want error %v with id 0", f.Header, eb, tc.code)
			}
			if _, err := pc.ReadFrame(); err == nil {
				t.Fatal("connection still open after the timeout frame")
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("closed after %v", d)
			}
		})
	}
}

// Request id 0 is refused and ends the connection.
func TestRequestIDZeroRefused(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	rd := start(t, cfg)
	defer rd.shutdown(t)
	nc, err := net.Dial("unix", cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	pc := proto.NewConn(nc.(*net.UnixConn), 1<<20)
	if err := pc.WriteMessage(proto.Header{Version: 1, Op: proto.OpPing, ID: 0}, &proto.Ping{Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := pc.ReadFrame()
	var eb proto.ErrorBody
	if err != nil || !f.IsError() || eb.Decode(f.Body) != nil || eb.Code != proto.CodeBadFrame {
		t.Fatalf("ping with id 0: %v %+v", err, eb)
	}
	if _, err := pc.ReadFrame(); err == nil {
		t.Fatal("connection still open")
	}
}

// docs/protocol.md names every [limits] key, every field of the MODELS
// limits, and the admission keys, so a limit cannot be added without
// documenting it.
func TestProtocolDocNamesEveryLimit(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, typ := range []reflect.Type{reflect.TypeOf(Limits{}), reflect.TypeOf(proto.ServerLimits{})} {
		for i := range typ.NumField() {
			tag := typ.Field(i).Tag
			k := tag.Get("toml")
			if k == "" {
				k, _, _ = strings.Cut(tag.Get("json"), ",")
			}
			keys = append(keys, k)
		}
	}
	keys = append(keys, "allowed_groups", "socket_group", "admin_groups")
	for _, k := range keys {
		if !strings.Contains(string(doc), "`"+k+"`") && !strings.Contains(string(doc), `"`+k+`"`) {
			t.Errorf("docs/protocol.md does not name %q", k)
		}
	}
}

// Per-uid limits sit below the global ones, and a refused client reads why.
func TestPerUIDLimits(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Limits.MaxConns = 4
	cfg.Limits.MaxSessions = 4
	cfg.Limits.AdminReservedConns = 0 // the test runs as root, an admin (TestAdmission covers the reserve)
	rd := start(t, cfg)
	defer rd.shutdown(t)
	if got := rd.d.cfg.Limits.MaxConnsPerUID; got != 3 {
		t.Fatalf("max_conns_per_uid with max_conns 4: %d, want 3", got)
	}
	ctx := context.Background()
	var cs []*proto.Client
	for range 3 {
		cs = append(cs, dial(t, cfg.Socket))
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := proto.Dial(dctx, cfg.Socket, &proto.Options{ClientName: "one too many"})
	if proto.CodeOf(err) != proto.CodeLimitExceeded || !strings.Contains(err.Error(), "max_conns_per_uid") {
		t.Fatalf("fourth connection of one uid: %v", err)
	}
	for i := range 3 {
		op, err := cs[i].Open(ctx, &proto.Open{Layout: testLayout(8)})
		if err != nil {
			t.Fatal(err)
		}
		op.Region.Close()
	}
	_, err = cs[0].Open(ctx, &proto.Open{Layout: testLayout(8)})
	if proto.CodeOf(err) != proto.CodeLimitExceeded || !strings.Contains(err.Error(), "max_sessions_per_uid") {
		t.Fatalf("fourth session of one uid: %v", err)
	}
	// A connection that ends frees its slot.
	cs[2].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := proto.Dial(dctx, cfg.Socket, &proto.Options{ClientName: "after close"})
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not freed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A connection holding a session that stops in the middle of a frame is
// closed after frame_timeout with a BAD_FRAME frame of request id 0; its
// session goes with it.
func TestFrameTimeout(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Limits.FrameTimeout = Duration(300 * time.Millisecond)
	rd := start(t, cfg)
	defer rd.shutdown(t)
	nc, err := net.Dial("unix", cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	pc := proto.NewConn(nc.(*net.UnixConn), 1<<20)
	call := func(op proto.Op, id uint64, m proto.Message) *proto.Frame {
		t.Helper()
		if err := pc.WriteMessage(proto.Header{Version: 1, Op: op, ID: id}, m); err != nil {
			t.Fatal(err)
		}
		f, err := pc.ReadFrame()
		if err != nil || f.IsError() {
			t.Fatalf("%v: %v %+v", op, err, f)
		}
		f.CloseFiles()
		return f
	}
	call(proto.OpHello, 1, &proto.Hello{MinVersion: 1, MaxVersion: 1})
	call(proto.OpOpen, 2, &proto.Open{Layout: testLayout(8)})
	// Half a PING header, then silence.
	if _, err := nc.Write([]byte("FMEM\x01\x00\x02\x00")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := pc.ReadFrame()
	var eb proto.ErrorBody
	if err != nil || !f.IsError() || f.ID != 0 || eb.Decode(f.Body) != nil || eb.Code != proto.CodeBadFrame {
		t.Fatalf("after a stalled frame: %v %+v", err, eb)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("closed after %v", d)
	}
	if _, err := pc.ReadFrame(); err == nil {
		t.Fatal("connection still open")
	}
}

// The last admin_reserved_conns slots of max_conns are kept for root and
// admin_groups, who may also exceed max_conns_per_uid by as many; refusals
// name the limit that applies.
func TestAdmission(t *testing.T) {
	lim := Limits{MaxConns: 10, MaxConnsPerUID: 4, AdminReservedConns: 2}
	for _, tc := range []struct {
		admin       bool
		total, mine int
		want        string // "" admitted, else a substring of the refusal
	}{
		{false, 0, 0, ""},
		{false, 7, 3, ""},
		{false, 8, 0, "admin_reserved_conns 2 are kept"},
		{false, 5, 4, "max_conns_per_uid 4"},
		{true, 8, 0, ""},
		{true, 9, 5, ""},
		{true, 10, 0, "limits.max_conns 10); retry"},
		{true, 5, 6, "plus limits.admin_reserved_conns 2"},
	} {
		err := admission(lim, tc.admin, 1000, tc.total, tc.mine)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("admin=%v total=%d mine=%d: refused: %v", tc.admin, tc.total, tc.mine, err)
		case tc.want != "" && (proto.CodeOf(err) != proto.CodeLimitExceeded || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("admin=%v total=%d mine=%d: %v, want LIMIT_EXCEEDED with %q", tc.admin, tc.total, tc.mine, err, tc.want)
		}
	}
	cfg := DefaultConfig()
	cfg.Limits.MaxConns = 4
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := cfg.Limits.AdminReservedConns; got != 1 {
		t.Errorf("admin_reserved_conns with max_conns 4: %d, want 1 (a quarter)", got)
	}
}

// Refusals of a limit name its configuration key and what to change, so
// the user can act without reading the code.
func TestLimitErrorsNameTheKey(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.Limits.MaxSessionsPerConn = 1
	cfg.Limits.MaxRowBytes = 64 * 40
	cfg.Limits.MaxLayers = 2
	cfg.Limits.MaxReserveBytes = 1 << 20
	rd := start(t, cfg)
	defer rd.shutdown(t)
	ctx := context.Background()
	c := dial(t, cfg.Socket)
	three := testLayout(8)
	three.Layers = append(three.Layers, three.Layers[0])
	wide := testLayout(8)
	wide.Layers[0].RowBytes *= 2
	wide.Layers[0].Segments = []uint32{64, 16}
	big := testLayout(1024)
	for _, tc := range []struct {
		what string
		l    proto.Layout
		want []string
	}{
		{"layers", three, []string{"limits.max_layers", "fewer layers"}},
		{"row", wide, []string{"limits.max_row_bytes"}},
		{"reserve", big, []string{"limits.max_reserve_bytes", "reserve_slots"}},
	} {
		_, err := c.Open(ctx, &proto.Open{Layout: tc.l})
		if proto.CodeOf(err) != proto.CodeLimitExceeded {
			t.Fatalf("%s: %v, want LIMIT_EXCEEDED", tc.what, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", tc.what, err, w)
			}
		}
	}
	op, err := c.Open(ctx, &proto.Open{Layout: testLayout(8)})
	if err != nil {
		t.Fatal(err)
	}
	op.Region.Close()
	_, err = c.Open(ctx, &proto.Open{Layout: testLayout(8)})
	if proto.CodeOf(err) != proto.CodeLimitExceeded || !strings.Contains(err.Error(), "limits.max_sessions_per_conn") || !strings.Contains(err.Error(), "CLOSE") {
		t.Errorf("second session on a connection with max_sessions_per_conn 1: %v", err)
	}
}
