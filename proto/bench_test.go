package proto

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// Round-trip benchmarks over real unix sockets, to compare the daemon's
// cycle round trip against a bare echo of the same size on the same
// machine. They report p50/p99 latency besides ns/op (b.N round trips,
// issued one at a time).

// rawEcho serves frames on c until it fails: every request is answered
// with reply (or with its own body when reply is nil).
func rawEcho(c *net.UnixConn, reply []byte) {
	cc := NewConn(c, MaxBodyLimit)
	for {
		f, err := cc.ReadFrame()
		if err != nil {
			return
		}
		body := reply
		if body == nil {
			body = f.Body
		}
		if cc.WriteFrame(Header{Version: f.Version, Op: f.Op, Flags: FlagResponse, ID: f.ID}, body) != nil {
			return
		}
	}
}

type latencies []time.Duration

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	slices.Sort(l)
	q := func(p float64) float64 { return float64(l[int(p*float64(len(l)-1))].Nanoseconds()) / 1e3 }
	b.ReportMetric(q(0.5), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
}

func benchRaw(b *testing.B, req, reply []byte, op Op) {
	a, s := socketpair(b)
	go rawEcho(s, reply)
	ca := NewConn(a, MaxBodyLimit)
	lat := make(latencies, 0, b.N)
	b.SetBytes(int64(len(req) + len(reply)))
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if err := ca.WriteFrame(Header{Version: 1, Op: op, ID: uint64(i + 1)}, req); err != nil {
			b.Fatal(err)
		}
		f, err := ca.ReadFrame()
		if err != nil || f.ID != uint64(i+1) {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	lat.report(b)
}

// cycleBatch builds a CYCLE request of batch sessions with DeepSeek-V4's
// 3 target layers × 4096-d bf16 hidden state, and a reply with `pages`
// resident pages and one tail page per session.
func cycleBatch(batch, pages int) (*Cycle, *CycleReply) {
	req := &Cycle{}
	rep := &CycleReply{}
	hidden := make([]byte, 4096*2)
	for s := range batch {
		req.Entries = append(req.Entries, CycleEntry{Session: uint64(s + 1), Step: 64, Position: 1 << 17,
			Queries: [][]byte{hidden, hidden, hidden}})
		r := CycleResult{Lease: uint64(s + 1), Cycle: 9, Tail: []PageSlot{{Page: 2048, Slot: 1}}}
		for p := range pages {
			r.Pages = append(r.Pages, PageSlot{Page: uint32(p * 5), Slot: uint32(p)})
		}
		rep.Results = append(rep.Results, r)
	}
	return req, rep
}

func BenchmarkRawPing(b *testing.B) {
	for _, size := range []int{0, 64, 4096} {
		b.Run(byteSize(size), func(b *testing.B) { benchRaw(b, make([]byte, size), nil, OpPing) })
	}
}

// BenchmarkRawCycleFrame: echo of pre-encoded CYCLE-sized frames (no body
// encoding or decoding): the floor for a daemon cycle round trip.
func BenchmarkRawCycleFrame(b *testing.B) {
	for _, batch := range []int{1, 8} {
		req, rep := cycleBatch(batch, 410)
		rb, _ := req.AppendBinary(nil)
		pb, _ := rep.AppendBinary(nil)
		b.Run("batch"+strconv.Itoa(batch), func(b *testing.B) { benchRaw(b, rb, pb, OpCycle) })
	}
}

// BenchmarkClientPing: PING through Client (request id dispatch, reader
// goroutine) against an echo server built on Conn.
func BenchmarkClientPing(b *testing.B) {
	c := benchClient(b, nil)
	ctx := context.Background()
	lat := make(latencies, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := c.Ping(ctx, nil); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	lat.report(b)
}

// BenchmarkClientCycle: Client.Cycle with body encoding and decoding on
// both sides, against a server that decodes the request and answers a
// fixed reply: the protocol's share of a daemon cycle.
func BenchmarkClientCycle(b *testing.B) {
	for _, batch := range []int{1, 8} {
		req, rep := cycleBatch(batch, 410)
		b.Run("batch"+strconv.Itoa(batch), func(b *testing.B) {
			c := benchClient(b, rep)
			ctx := context.Background()
			lat := make(latencies, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				res, err := c.Cycle(ctx, req.Entries)
				if err != nil || len(res) != batch {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			lat.report(b)
		})
	}
}

// benchClient starts a listener whose connections answer HELLO without a
// staging region, PING by echo and CYCLE by decoding the request and
// sending cycleReply; it returns a connected Client.
func benchClient(b *testing.B, cycleReply *CycleReply) *Client {
	path := filepath.Join(b.TempDir(), "bench.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		uc, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		c := NewConn(uc, MaxBodyLimit)
		defer c.Close()
		for {
			f, err := c.ReadFrame()
			if err != nil {
				return
			}
			req := NewRequest(f.Op)
			if err := req.Decode(f.Body); err != nil {
				c.ReplyError(f.Header, err)
				continue
			}
			switch f.Op {
			case OpHello:
				v, _ := req.(*Hello).Negotiate()
				err = c.Reply(f.Header, &HelloReply{Version: v})
			case OpCycle:
				err = c.Reply(f.Header, cycleReply)
			default:
				err = c.Reply(f.Header, req)
			}
			if err != nil {
				return
			}
		}
	}()
	c, err := Dial(context.Background(), path, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(); ln.Close(); <-done })
	return c
}

func BenchmarkEncodeCycle(b *testing.B) {
	req, _ := cycleBatch(8, 410)
	buf := make([]byte, 0, 256<<10)
	b.ReportAllocs()
	for range b.N {
		buf, _ = req.AppendBinary(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkDecodeCycleReply(b *testing.B) {
	_, rep := cycleBatch(8, 410)
	body, _ := rep.AppendBinary(nil)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for range b.N {
		var r CycleReply
		if err := r.Decode(body); err != nil {
			b.Fatal(err)
		}
	}
}

func byteSize(n int) string { return strconv.Itoa(n) + "B" }
