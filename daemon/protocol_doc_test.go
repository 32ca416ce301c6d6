package daemon

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/proto"
)

// Regression tests for places where the daemon disagreed with
// docs/protocol.md, found by a client written from the document alone.

// A frame cut short by end of file (the peer shut its write side after part
// of a header or body) is check 1 or 7 of protocol.md section 4: the daemon
// answers BAD_FRAME as a connection-level frame (id 0, op 0) and closes,
// instead of closing silently.
func TestTruncatedFrameAtEOFGetsBadFrame(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)
	ping := make([]byte, proto.HeaderSize+6)
	proto.PutHeader(ping, proto.Header{Version: 1, Op: proto.OpPing, ID: 9, BodyLen: 6, CRC: proto.Checksum([]byte("abcdef"))})
	copy(ping[proto.HeaderSize:], "abcdef")
	for _, tc := range []struct {
		name  string
		hello bool
		cut   int
	}{
		{"header before HELLO", false, 10},
		{"header after HELLO", true, 10},
		{"body after HELLO", true, proto.HeaderSize + 3},
		{"body before HELLO", false, proto.HeaderSize + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: rd.d.Addr(), Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			defer uc.Close()
			_ = uc.SetDeadline(time.Now().Add(10 * time.Second))
			if tc.hello {
				rawCall(t, uc, 1, proto.OpHello, &proto.Hello{MinVersion: 1, MaxVersion: 1, ClientName: "x"}, nil)
			}
			if _, err := uc.Write(ping[:tc.cut]); err != nil {
				t.Fatal(err)
			}
			if err := uc.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			f, err := proto.ReadFrame(uc, 0)
			if err != nil {
				t.Fatalf("want a BAD_FRAME frame, got %v", err)
			}
			var e proto.ErrorBody
			if !f.IsError() || e.Decode(f.Body) != nil || e.Code != proto.CodeBadFrame || f.ID != 0 || f.Op != 0 {
				t.Fatalf("got flags %#x id %d op %v code %v %q; want BAD_FRAME, id 0, op 0", f.Flags, f.ID, f.Op, e.Code, e.Msg)
			}
			if _, err := proto.ReadFrame(uc, 0); err != io.EOF {
				t.Fatalf("after the BAD_FRAME frame: %v, want EOF", err)
			}
		})
	}
}

// A CYCLE result's above_fraction is the running fraction the fallback rule
// watches (protocol.md 10.9, proto.CycleCounters), the same number INSPECT
// reports — not the fraction of the last cycle alone, which drops to 0 once
// a session in full residency stops scoring.
func TestCycleAboveFractionIsRunning(t *testing.T) {
	dir := t.TempDir()
	rd := start(t, testConfig(t, dir))
	defer rd.shutdown(t)
	c := dial(t, rd.d.Addr())
	ctx := context.Background()
	l := testLayout(40)
	// A fallback ratio this small puts the session in full residency at its
	// first scored cycle that finds anything above threshold.
	op, err := c.Open(ctx, &proto.Open{Layout: l, Policy: proto.Policy{FirstKeep: 1, LastKeep: 1, KMax: 1, FallbackRatio: 1e-9}})
	if err != nil {
		t.Fatal(err)
	}
	op.Region.Close()
	r := rand.New(rand.NewPCG(3, 3))
	appendAll(t, c, op.Session, &l, 1, 0, 64*20, r)
	sawAbove, sawFallback := false, false
	for k := range 4 {
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Step: uint64(64 * k), Position: 64 * 20 * 4, Queries: queries(r, 64, 3)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("cycle %d: %v %v", k, err, res[0].Err)
		}
		in, err := c.Inspect(ctx, proto.AdminTarget{Session: op.Session})
		if err != nil {
			t.Fatal(err)
		}
		if got := res[0].Counters.AboveFraction; got != in.AboveFraction {
			t.Fatalf("cycle %d: CYCLE above_fraction %v, INSPECT %v: want the same running fraction", k, got, in.AboveFraction)
		}
		sawAbove = sawAbove || in.AboveFraction > 0
		sawFallback = sawFallback || res[0].Counters.Fallback
		if err := c.Release(ctx, res[0].Lease); err != nil {
			t.Fatal(err)
		}
	}
	if !sawAbove || !sawFallback {
		t.Fatalf("the session never had chunks above threshold (%v) or never fell back (%v): the test proves nothing", sawAbove, sawFallback)
	}
}

// The defaults in the [limits] table of docs/protocol.md section 9 are the
// daemon's: a client sized from the document gets what a default daemon
// enforces.
func TestProtocolDocLimitDefaults(t *testing.T) {
	doc, err := os.ReadFile("../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| ([0-9][0-9,]*) ?(KiB|MiB|GiB|min|s)?[ |(]")
	units := map[string]float64{"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "s": 1, "min": 60}
	lim := reflect.ValueOf(DefaultConfig().Limits)
	typ := lim.Type()
	checked := 0
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		var f reflect.Value
		for i := range typ.NumField() {
			if typ.Field(i).Tag.Get("toml") == m[1] {
				f = lim.Field(i)
			}
		}
		if !f.IsValid() {
			continue // a row of another table
		}
		n, err := strconv.ParseFloat(strings.ReplaceAll(m[2], ",", ""), 64)
		if err != nil {
			t.Fatal(err)
		}
		want := n * units[m[3]]
		var got float64
		switch v := f.Interface().(type) {
		case Duration:
			got = time.Duration(v).Seconds()
		default:
			got = float64(f.Convert(reflect.TypeOf(int64(0))).Int())
		}
		if got != want {
			t.Errorf("docs/protocol.md: %s defaults to %s %s, DefaultConfig has %v", m[1], m[2], m[3], got)
		}
		checked++
	}
	if checked < 17 {
		t.Errorf("checked %d defaults of docs/protocol.md section 9, want at least 17 (did the table's format change?)", checked)
	}
}
