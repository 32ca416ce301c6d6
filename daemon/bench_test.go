package daemon

import (
	"context"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flashmemory/flashmemory/internal/synth"
	"github.com/flashmemory/flashmemory/proto"
)

// benchDaemon starts a daemon with a session of `chunks` chunks appended.
func benchDaemon(b *testing.B, chunks uint64, l proto.Layout) (*running, *proto.Client, uint64) {
	b.Helper()
	t := &testing.T{}
	cfg := testConfig(t, b.TempDir())
	cfg.Host.BudgetBytes = 4 << 30
	rd := start(t, cfg)
	b.Cleanup(func() { rd.shutdown(t) })
	c, err := proto.Dial(context.Background(), cfg.Socket, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	op, err := c.Open(context.Background(), &proto.Open{Layout: l, Policy: proto.Policy{KMax: 16}})
	if err != nil {
		b.Fatal(err)
	}
	op.Region.Close()
	if chunks > 0 {
		r := rand.New(rand.NewPCG(1, 1))
		for first := uint64(0); first < chunks; first += 256 {
			n := min(256, chunks-first)
			size, _ := l.PayloadBytes(n)
			synth.FillAppend(&l, 1, first, n, c.Staging()[:size])
			if _, err := c.Append(context.Background(), &proto.Append{Session: op.Session, FirstChunk: first, Count: uint32(n), Length: size, Keys: synth.Keys(r, 3, 132, n)}); err != nil {
				b.Fatal(err)
			}
		}
	}
	return rd, c, op.Session
}

// BenchmarkCycleRoundTrip measures a CYCLE frame's round trip through the
// daemon for one session of 1,024 chunks (16 pages, all resident after the
// first cycle, so no recall), with the daemon's scoring time reported
// separately; BenchmarkEchoRoundTrip is the bare PING on the same kind of
// connection, its baseline.
func BenchmarkCycleRoundTrip(b *testing.B) {
	l := testLayout(64)
	_, c, sess := benchDaemon(b, 1024, l)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(2, 2))
	q := queries(r, 64, 3)
	var lease uint64
	var rtt, score []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: sess, Position: 4096, Queries: q}})
		d := time.Since(t0)
		if err != nil || res[0].Err != nil {
			b.Fatal(err, res[0].Err)
		}
		rtt = append(rtt, d)
		score = append(score, time.Duration(res[0].Counters.ScoreMicros)*time.Microsecond)
		if lease != 0 {
			c.Release(ctx, lease)
		}
		lease = res[0].Lease
	}
	b.StopTimer()
	ex := make([]time.Duration, len(rtt))
	for i := range rtt {
		ex[i] = rtt[i] - score[i]
	}
	b.ReportMetric(quantile(rtt, 0.5), "p50-µs")
	b.ReportMetric(quantile(rtt, 0.99), "p99-µs")
	b.ReportMetric(quantile(ex, 0.5), "p50-excl-score-µs")
	b.ReportMetric(quantile(ex, 0.99), "p99-excl-score-µs")
	b.ReportMetric(quantile(score, 0.5), "score-p50-µs")
}

func BenchmarkEchoRoundTrip(b *testing.B) {
	_, c, _ := benchDaemon(b, 0, testLayout(8))
	ctx := context.Background()
	payload := make([]byte, 3*128+64)
	var rtt []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := c.Ping(ctx, payload); err != nil {
			b.Fatal(err)
		}
		rtt = append(rtt, time.Since(t0))
	}
	b.StopTimer()
	b.ReportMetric(quantile(rtt, 0.5), "p50-µs")
	b.ReportMetric(quantile(rtt, 0.99), "p99-µs")
}

func quantile(d []time.Duration, q float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[int(q*float64(len(s)-1))].Nanoseconds()) / 1e3
}

// BenchmarkAppend streams DeepSeek-V4-shaped chunks (21 layers, 584 B per
// chunk per layer) through the staging region into the host mirror, 256
// chunks per APPEND; BenchmarkMemcpy copies the same bytes once, its
// baseline.
func BenchmarkAppend(b *testing.B) {
	l := proto.DeepSeekV4Layout(64)
	// The random test model has 132-byte keys and 3 target layers, like the layout.
	const per = 256
	size, _ := l.PayloadBytes(per)
	_, c, sess := benchDaemon(b, 0, l)
	ctx := context.Background()
	synth.FillAppend(&l, 1, 0, per, c.Staging()[:size])
	r := rand.New(rand.NewPCG(3, 3))
	keys := synth.Keys(r, 3, 132, per)
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Append(ctx, &proto.Append{Session: sess, FirstChunk: uint64(i * per), Count: per, Length: size, Keys: keys}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMemcpy(b *testing.B) {
	l := proto.DeepSeekV4Layout(64)
	size, _ := l.PayloadBytes(256)
	src := make([]byte, size)
	dst := make([][]byte, 64)
	for i := range dst {
		dst[i] = make([]byte, size)
		copy(dst[i], src) // fault the pages in: the mirror's extents are reused too
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		copy(dst[i%len(dst)], src)
	}
}

// BenchmarkMemcpyFresh copies the same bytes into memory the process never
// touched (a new anonymous mapping each time), which is what an APPEND that
// grows a session does; the VM's first touch of a page dominates it.
func BenchmarkMemcpyFresh(b *testing.B) {
	l := proto.DeepSeekV4Layout(64)
	size, _ := l.PayloadBytes(256)
	src := make([]byte, size)
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			b.Fatal(err)
		}
		copy(dst, src)
		b.StopTimer()
		unix.Munmap(dst)
		b.StartTimer()
	}
}
