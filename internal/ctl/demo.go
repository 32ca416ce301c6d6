package ctl

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/flashmemory/flashmemory/daemon"
	"github.com/flashmemory/flashmemory/eval"
	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/internal/synth"
	"github.com/flashmemory/flashmemory/proto"
)

type demoOpts struct {
	tokens  int
	layers  int
	needles int
	cycles  int
	model   string
	seed    uint64
	keep    bool
	// durability is how --keep persists the session: local or cluster.
	durability string

	needlesSet bool // --needles given: refuse rather than shrink it
}

// demoFootprint is the share of pages the demo's policy keeps resident.
const demoFootprint = 0.10

// demoPolicy sizes LSA's sink and tail as the evaluation does: sized for
// long contexts, at 10 % of a short one they would fill the whole budget.
func demoPolicy(chunks uint64) proto.Policy {
	pol := eval.PolicyFor(int(chunks), demoFootprint)
	return proto.Policy{FirstKeep: uint32(max(pol.FirstKeep, 1)), LastKeep: uint32(pol.LastKeep), KMax: uint32(pol.KMax)}
}

// needleRoom is how many needles the demo can plant at tokens and still
// expect every one resident each cycle: the page budget (KMax) less the
// pages the policy always keeps (the sink, and the recent tail, which may
// straddle one more page as decode appends). Needles never straddle a page,
// so each takes at most one page of the rest.
func needleRoom(tokens int) int {
	const cpp = 64
	chunks := uint64(max(tokens, 0) / 4)
	if chunks < cpp {
		return 0
	}
	p := demoPolicy(chunks)
	sink := (uint64(p.FirstKeep) + cpp - 1) / cpp
	tail := (uint64(p.LastKeep)+cpp-1)/cpp + 1
	return int(uint64(p.KMax)) - int(sink+tail)
}

// minDemoTokens is the smallest --tokens with room for one needle.
func minDemoTokens() int {
	t := 1024
	for needleRoom(t) < 1 {
		t += 1024
	}
	return t
}

func demoCmd(g *globals) *cobra.Command {
	o := demoOpts{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a synthetic decoder through the daemon: a long session with planted relevant chunks",
		Long: `demo is a synthetic decoder. It opens a session with DeepSeek-V4-shaped page rows, prefills
--tokens tokens of random KV (4 tokens per chunk, 64 chunks per page) whose index keys the
daemon's random-weight indexer scores low, except for --needles planted spans it scores high,
then decodes: once per 64 steps it sends a CYCLE, reads the resident pages through the mapped
reserve and checks their bytes, writes the new chunks straight into the reserve's tail cells and
commits them. It ends with the KV footprint kept resident, the recall of the planted chunks,
bytes moved per tier and cycle latency.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.needlesSet = cmd.Flags().Changed("needles")
			if o.durability != "local" && o.durability != "cluster" {
				return fmt.Errorf("--durability is local or cluster, not %q", o.durability)
			}
			return runDemo(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.tokens, "tokens", 131072, "context length in tokens")
	f.IntVar(&o.layers, "layers", 4, "KV layers per page (DeepSeek-V4 rows of 37,440 B each; 21 for the full model)")
	f.IntVar(&o.needles, "needles", 16, "planted relevant spans (4 chunks each); by default fewer when the 10 % footprint of --tokens has room for fewer")
	f.IntVar(&o.cycles, "cycles", 24, "decode cycles of 64 steps")
	f.StringVar(&o.model, "model", "demo", "random-weight model registered in the daemon (its seed and shape must be flashmemd's embedded defaults)")
	f.Uint64Var(&o.seed, "seed", 1, "seed of payloads, keys and needle positions")
	f.BoolVar(&o.keep, "keep", false, "leave the session open (persisted as \"demo\") instead of deleting it")
	f.StringVar(&o.durability, "durability", "local", "with --keep, PERSIST at this durability: local (this host's SSD) or cluster (replicated; needs a [cluster] daemon)")
	return cmd
}

// demoModel rebuilds the daemon's random demo model so the synthetic decoder
// can choose index keys the daemon will score high or low.
func demoModel(name string) (*indexer.Model, error) {
	for _, rc := range daemon.DefaultConfig().Indexer.Random {
		if rc.Name != name {
			continue
		}
		cfg := indexer.ModelConfig{Layers: make([]int, rc.TargetLayers), Hidden: rc.Hidden, QLoraRank: rc.Rank, Heads: rc.Heads, HeadDim: rc.HeadDim}
		for i := range cfg.Layers {
			cfg.Layers[i] = i
		}
		return indexer.RandomModel(uint64(rc.Seed), cfg)
	}
	return nil, fmt.Errorf("model %q is not one of flashmemd's embedded random models", name)
}

// keyPools scores candidate keys against the decoder's query at every
// position the demo will cycle at, and keeps per target layer the keys that
// score high at all of them (needles) and low at all of them (haystack).
func keyPools(m *indexer.Model, r *rand.Rand, query [][]byte, positions []int64) (hi, lo [][][]byte, err error) {
	const cands = 4096
	kb := m.KeyBytes()
	t := len(m.Layers())
	raw := make([][]byte, t)
	keys := make([]indexer.Keys, t)
	for l := 0; l < t; l++ {
		raw[l] = synth.Keys(r, 1, kb, cands)
		if keys[l], err = m.NewKeys(); err != nil {
			return nil, nil, err
		}
		if err := keys[l].Append(raw[l]); err != nil {
			return nil, nil, err
		}
	}
	minL := make([][]float32, t)
	maxL := make([][]float32, t)
	for pi, pos := range positions {
		out := make([][]float32, t)
		for l := range out {
			out[l] = make([]float32, cands)
		}
		if err := m.Score([]indexer.ScoreItem{{Query: indexer.Query{Position: pos, Layers: query}, Keys: keys, Out: out}}); err != nil {
			return nil, nil, err
		}
		for l := 0; l < t; l++ {
			if pi == 0 {
				minL[l] = slices.Clone(out[l])
				maxL[l] = slices.Clone(out[l])
				continue
			}
			for c, v := range out[l] {
				minL[l][c] = min(minL[l][c], v)
				maxL[l][c] = max(maxL[l][c], v)
			}
		}
	}
	hi = make([][][]byte, t)
	lo = make([][][]byte, t)
	for l := 0; l < t; l++ {
		for c := 0; c < cands; c++ {
			k := raw[l][c*kb : (c+1)*kb]
			switch {
			case minL[l][c] > 0.5:
				hi[l] = append(hi[l], k)
			case maxL[l][c] < -0.5:
				lo[l] = append(lo[l], k)
			}
		}
		if len(hi[l]) == 0 || len(lo[l]) == 0 {
			return nil, nil, fmt.Errorf("target layer %d: no candidate key scores consistently high (%d) or low (%d)", l, len(hi[l]), len(lo[l]))
		}
	}
	return hi, lo, nil
}

func runDemo(ctx context.Context, g *globals, o demoOpts) error {
	if o.layers < 1 || o.layers > 64 {
		return fmt.Errorf("%w: --layers %d: use 1 to 64", ErrUsage, o.layers)
	}
	if o.cycles < 2 || o.cycles > 100000 {
		return fmt.Errorf("%w: --cycles %d: use 2 or more (at most 100000)", ErrUsage, o.cycles)
	}
	if o.tokens > 4<<20 {
		return fmt.Errorf("%w: --tokens %d: at most %d", ErrUsage, o.tokens, 4<<20)
	}
	room := needleRoom(o.tokens)
	if room < 1 {
		return fmt.Errorf("%w: --tokens %d leaves no room for a needle in the 10 %% footprint beside the sink and recent pages: use --tokens %d or more",
			ErrUsage, o.tokens, minDemoTokens())
	}
	if o.needles < 1 {
		return fmt.Errorf("%w: --needles %d: plant at least 1", ErrUsage, o.needles)
	}
	if o.needles > room {
		if o.needlesSet {
			return fmt.Errorf("%w: --needles %d do not fit: at --tokens %d the 10 %% footprint has room for %d besides the sink and recent pages; use --needles %d or a larger --tokens",
				ErrUsage, o.needles, o.tokens, room, room)
		}
		o.needles = room
	}
	model, err := demoModel(o.model)
	if err != nil {
		return err
	}
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	out := g.out
	r := rand.New(rand.NewPCG(o.seed, 0xDE30))
	const cpp, stepsPerCycle, tokensPerChunk = 64, 64, 4
	chunks := uint64(o.tokens / tokensPerChunk)
	decodeChunks := uint64(stepsPerCycle / tokensPerChunk)
	pages := (chunks + decodeChunks*uint64(o.cycles) + cpp - 1) / cpp
	l := proto.Layout{ChunksPerPage: cpp, KeyBytes: uint32(model.KeyBytes()), TargetLayers: uint32(len(model.Layers())), CycleSteps: stepsPerCycle}
	for i := 0; i < o.layers; i++ {
		l.Layers = append(l.Layers, proto.LayerLayout{RowBytes: 37440, Segments: []uint32{576, 8}})
	}
	// Two cycles' resident sets (one leased to us, one being recalled) plus
	// the tail: about 2 × 10 % of the pages and some slack.
	l.ReserveSlots = uint32(min(pages, pages/4+48))
	name := ""
	if o.keep {
		name = "demo"
	}
	fmt.Fprintf(out, "demo: %d tokens = %d chunks = %d pages of %s (%d layers), %d needles, %d cycles\n",
		o.tokens, chunks, chunks/cpp, human(l.PageBytes()), o.layers, o.needles, o.cycles)

	query := make([][]byte, len(model.Layers()))
	for i := range query {
		query[i] = synth.Hidden(r, model.QueryBytes()/2)
	}
	var positions []int64
	for k := 0; k < o.cycles; k++ {
		positions = append(positions, int64(o.tokens+k*stepsPerCycle))
	}
	hi, lo, err := keyPools(model, r, query, positions)
	if err != nil {
		return err
	}
	// Needles: spans of 4 chunks outside the sink and the recent tail.
	st0, err := c.Status(ctx)
	if err != nil {
		return err
	}
	policy := demoPolicy(chunks)
	op, err := c.Open(ctx, &proto.Open{Name: name, Persist: o.keep, Model: o.model, Layout: l, Policy: policy,
		Device: proto.DeviceHostOnly}) // the demo reads pages with the CPU
	if proto.CodeOf(err) == proto.CodeSessionExists {
		return fmt.Errorf("a session named %q is left from an earlier demo --keep: `flashmemctl delete %s` removes it, or run demo without --keep (%w)", name, name, err)
	}
	if err != nil {
		return err
	}
	l.ReserveSlots = op.Region.Slots
	mem, err := op.Region.Map()
	if err != nil {
		return err
	}
	defer proto.Unmap(mem)
	defer op.Region.Close()
	sink, tail := uint64(policy.FirstKeep), uint64(policy.LastKeep)
	needle := map[uint64]bool{}
	var needleStarts []uint64
	for len(needleStarts) < o.needles && chunks > sink+tail+8 {
		s := sink + r.Uint64N(chunks-sink-tail-4)
		if s%cpp > cpp-4 || needle[s] || needle[s+3] {
			continue // straddles a page, or overlaps a needle
		}
		needleStarts = append(needleStarts, s)
		for k := uint64(0); k < 4; k++ {
			needle[s+k] = true
		}
	}
	keysFor := func(first, n uint64) []byte {
		kb := uint64(l.KeyBytes)
		buf := make([]byte, n*uint64(l.TargetLayers)*kb)
		for t := uint64(0); t < uint64(l.TargetLayers); t++ {
			for i := uint64(0); i < n; i++ {
				pool := lo[t]
				if needle[first+i] {
					pool = hi[t]
				}
				copy(buf[l.KeyOffset(n, t, i):], pool[r.IntN(len(pool))])
			}
		}
		return buf
	}

	// Prefill.
	t0 := time.Now()
	prog := newProgress(g.errw, int64(chunks), "prefill chunks")
	const batch = 256
	for first := uint64(0); first < chunks; first += batch {
		n := min(batch, chunks-first)
		size, _ := l.PayloadBytes(n)
		payload := c.Staging()
		if uint64(len(payload)) < size {
			return fmt.Errorf("staging region of %d B is smaller than one %d-chunk batch", len(payload), n)
		}
		synth.FillAppend(&l, o.seed, first, n, payload[:size])
		if _, err := c.Append(ctx, &proto.Append{Session: op.Session, FirstChunk: first, Count: uint32(n), Length: size, Keys: keysFor(first, n)}); err != nil {
			return err
		}
		prog.add(int64(n))
	}
	prog.done()
	prefill := time.Since(t0)
	fmt.Fprintf(out, "prefill: %s in %.2fs (%.0f MB/s)\n", human(chunks*l.PageBytes()/cpp), prefill.Seconds(), float64(chunks*l.PageBytes()/cpp)/prefill.Seconds()/1e6)

	// Decode.
	var lat, waits, scores []time.Duration
	var footprint float64
	var needleHits, needleTotal, checked, recalled int
	var lease uint64
	prog = newProgress(g.errw, int64(o.cycles), "decode cycles")
	for k := 0; k < o.cycles; k++ {
		pos := uint64(o.tokens + k*stepsPerCycle)
		tc := time.Now()
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Step: uint64(k * stepsPerCycle), Position: pos, Queries: query}})
		if err != nil {
			return err
		}
		cr := res[0]
		if cr.Err != nil {
			return fmt.Errorf("cycle %d: %w", k, cr.Err)
		}
		lat = append(lat, time.Since(tc))
		waits = append(waits, time.Duration(cr.Counters.WaitMicros)*time.Microsecond)
		scores = append(scores, time.Duration(cr.Counters.ScoreMicros)*time.Microsecond)
		footprint += float64(cr.Counters.ResidentPages) / float64(cr.Counters.TotalPages)
		recalled += int(cr.Counters.RecalledPages)
		resident := map[uint32]uint32{}
		for _, ps := range cr.Pages {
			resident[ps.Page] = ps.Slot
		}
		if k > 0 { // the selection is applied one cycle late
			for _, s := range needleStarts {
				needleTotal++
				if _, ok := resident[uint32(s/cpp)]; ok {
					if _, ok := resident[uint32((s+3)/cpp)]; ok {
						needleHits++
					}
				}
			}
		}
		// Read the pages holding needles through the mapped reserve.
		have := uint64(cr.Counters.Chunks)
		for _, s := range needleStarts {
			p := uint32(s / cpp)
			if slot, ok := resident[p]; ok {
				for ly := range l.Layers {
					if bad := synth.CheckRow(&l, o.seed, p, ly, min(have, chunks), op.Region.Row(mem, ly, slot)); bad >= 0 && uint64(bad) < chunks {
						return fmt.Errorf("cycle %d: page %d layer %d in slot %d: chunk %d differs from what was appended", k, p, ly, slot, bad)
					}
				}
				checked++
			}
		}
		if lease != 0 {
			if err := c.Release(ctx, lease); err != nil {
				return err
			}
		}
		lease = cr.Lease
		// 64 decode steps produce 16 chunks, written straight into the tail
		// cells the daemon assigned, then committed.
		tail := map[uint32]uint32{}
		for _, ps := range cr.Tail {
			tail[ps.Page] = ps.Slot
		}
		first := have
		for i := uint64(0); i < decodeChunks; i++ {
			ch := first + i
			slot, ok := tail[uint32(ch/cpp)]
			if !ok {
				return fmt.Errorf("cycle %d: no tail cell for chunk %d", k, ch)
			}
			for ly := range l.Layers {
				synth.FillCell(&l, o.seed, ch, ly, op.Region.Row(mem, ly, slot))
			}
		}
		if _, err := c.Commit(ctx, &proto.Commit{Session: op.Session, FirstChunk: first, Count: uint32(decodeChunks), Keys: keysFor(first, decodeChunks)}); err != nil {
			return fmt.Errorf("cycle %d commit: %w", k, err)
		}
		prog.add(1)
	}
	prog.done()
	if lease != 0 {
		_ = c.Release(ctx, lease)
	}
	st1, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if !o.keep {
		if err := c.CloseSession(ctx, op.Session, true); err != nil {
			return err
		}
	} else {
		dur := proto.DurabilityLocal
		if o.durability == "cluster" {
			dur = proto.DurabilityCluster
		}
		t0 := time.Now()
		if err := c.PersistDurable(ctx, op.Session, dur); err != nil {
			return fmt.Errorf("persisting the demo session at durability %s: %w", dur, err)
		}
		fmt.Fprintf(out, "demo: session \"demo\" persisted at durability %s in %s\n", dur, time.Since(t0).Round(time.Millisecond))
	}

	fmt.Fprintf(out, "\nresults (%d cycles)\n", o.cycles)
	fmt.Fprintf(out, "  KV footprint kept resident: %.1f %% of pages on average\n", 100*footprint/float64(o.cycles))
	fmt.Fprintf(out, "  planted-chunk recall:       %d/%d needle-cycles fully resident (%.1f %%), from the second cycle on\n", needleHits, needleTotal, 100*float64(needleHits)/float64(max(needleTotal, 1)))
	fmt.Fprintf(out, "  pages read back and checked through the mapped reserve: %d; pages recalled: %d\n", checked, recalled)
	fmt.Fprintf(out, "  cycle round trip: p50 %s  p99 %s   (daemon: score p50 %s, recall wait p50 %s p99 %s)\n",
		pct(lat, 50), pct(lat, 99), pct(scores, 50), pct(waits, 50), pct(waits, 99))
	fmt.Fprintln(out, "  bytes moved per tier (written / read during the demo):")
	for i, t1 := range st1.Tiers {
		var w0, r0 uint64
		if i < len(st0.Tiers) {
			w0, r0 = st0.Tiers[i].WrittenBytes, st0.Tiers[i].ReadBytes
		}
		fmt.Fprintf(out, "    %-8s %10s / %10s\n", t1.Name, human(t1.WrittenBytes-w0), human(t1.ReadBytes-r0))
	}
	if needleTotal > 0 && needleHits*10 < needleTotal*9 {
		return fmt.Errorf("planted-chunk recall %.2f is below 0.9 with %d needles in a footprint with room for %d: try fewer --needles or a larger --tokens",
			float64(needleHits)/float64(needleTotal), o.needles, room)
	}
	return nil
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)].Round(time.Microsecond)
}
