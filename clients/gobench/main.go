// Command gobench measures the round trip of PING and CYCLE through the Go client (package
// proto), the baseline that clients/bench.sh compares the Python and C clients with: the
// same daemon, the same session shape, the same number of round trips, one JSON line out.
//
//	gobench -socket PATH [-n 2000] [-chunks 8192] [-sessions 1]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"github.com/flashmemory/flashmemory/internal/synth"
	"github.com/flashmemory/flashmemory/proto"
)

func main() {
	sock := flag.String("socket", "", "flashmemd socket")
	n := flag.Int("n", 2000, "round trips per op")
	chunks := flag.Uint64("chunks", 8192, "chunks per session")
	sessions := flag.Int("sessions", 1, "sessions per CYCLE (the batch)")
	hidden := flag.Int("hidden", 64, "hidden size of the daemon's model (query bytes / 2)")
	flag.Parse()
	if err := run(*sock, *n, *chunks, *sessions, *hidden); err != nil {
		fmt.Fprintln(os.Stderr, "gobench:", err)
		os.Exit(1)
	}
}

// Layout is clients/bench.sh's session shape, the same in all three clients.
func layout() proto.Layout {
	return proto.Layout{ChunksPerPage: 64, KeyBytes: 132, TargetLayers: 3, CycleSteps: 64, ReserveSlots: 256,
		Layers: []proto.LayerLayout{{RowBytes: 64 * 40, Segments: []uint32{32, 8}}, {RowBytes: 64*24 + 512, Segments: []uint32{24}}}}
}

type stats struct {
	P50  float64 `json:"p50"`
	P99  float64 `json:"p99"`
	Mean float64 `json:"mean"`
}

func summarize(d []time.Duration) stats {
	slices.Sort(d)
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	us := func(x time.Duration) float64 { return float64(x.Nanoseconds()) / 1e3 }
	return stats{P50: us(d[len(d)/2]), P99: us(d[len(d)*99/100]), Mean: us(sum) / float64(len(d))}
}

func run(sock string, n int, chunks uint64, nsess, hidden int) error {
	ctx := context.Background()
	c, err := proto.Dial(ctx, sock, &proto.Options{ClientName: "gobench"})
	if err != nil {
		return err
	}
	defer c.Close()
	l := layout()
	r := rand.New(rand.NewPCG(1, 2))
	var entries []proto.CycleEntry
	for s := 0; s < nsess; s++ {
		op, err := c.Open(ctx, &proto.Open{Layout: l})
		if err != nil {
			return err
		}
		op.Region.Close()
		for at := uint64(0); at < chunks; at += 512 {
			k := min(512, chunks-at)
			pl, _ := l.PayloadBytes(k)
			p := make([]byte, pl)
			synth.FillAppend(&l, 1, at, k, p)
			if _, err := c.Append(ctx, &proto.Append{Session: op.Session, FirstChunk: at, Count: uint32(k), Inline: true,
				Payload: p, Keys: synth.Keys(r, 3, 132, k)}); err != nil {
				return err
			}
		}
		q := make([][]byte, 3)
		for i := range q {
			q[i] = synth.Hidden(r, hidden)
		}
		entries = append(entries, proto.CycleEntry{Session: op.Session, Position: chunks * 4, Queries: q})
	}
	ping := make([]time.Duration, 0, n)
	cyc := make([]time.Duration, 0, n)
	server := make([]time.Duration, 0, n) // the daemon's own time: scoring + recall wait
	over := make([]time.Duration, 0, n)   // round trip less the daemon's time
	pages := 0
	for i := 0; i < n+50; i++ {
		t0 := time.Now()
		if _, err := c.Ping(ctx, []byte("ping")); err != nil {
			return err
		}
		t1 := time.Now()
		res, err := c.Cycle(ctx, entries)
		t2 := time.Now()
		if err != nil {
			return err
		}
		leases := make([]uint64, 0, len(res))
		var srv time.Duration
		for _, x := range res {
			srv = max(srv, time.Duration(x.Counters.ScoreMicros+x.Counters.WaitMicros)*time.Microsecond)
			if x.Err != nil {
				return x.Err
			}
			leases = append(leases, x.Lease)
			pages = len(x.Pages)
		}
		if err := c.Release(ctx, leases...); err != nil {
			return err
		}
		if i >= 50 {
			ping = append(ping, t1.Sub(t0))
			cyc = append(cyc, t2.Sub(t1))
			server = append(server, srv)
			over = append(over, t2.Sub(t1)-srv)
		}
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"client": "go", "n": n, "sessions": nsess, "hidden": hidden, "chunks": chunks, "pages_per_entry": pages,
		"ping_us": summarize(ping), "cycle_us": summarize(cyc), "server_us": summarize(server), "overhead_us": summarize(over),
	})
}
