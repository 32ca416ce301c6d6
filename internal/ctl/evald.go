package ctl

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flashmemory/flashmemory/eval"
	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/indexer/textmode"
	"github.com/flashmemory/flashmemory/internal/synth"
	"github.com/flashmemory/flashmemory/models"
	"github.com/flashmemory/flashmemory/proto"
)

// evalOpts configures flashmemctl eval.
type evalOpts struct {
	data       string
	footprints []float64
	modes      []string // text-mode scorers run through the daemon
	baselines  []string // computed client side
	model      string   // daemon model name
	modelFile  string   // the same model's file ("" = the embedded default)
	seed       uint64
	asJSON     bool
	inProcess  bool
	expand     string // multi-hop expansion policy, in process ("auto", "on", "off")
	progress   io.Writer
}

func evalCmd(g *globals) *cobra.Command {
	o := evalOpts{}
	var fps, modes, baselines string
	cmd := &cobra.Command{
		Use:   "eval --data FILE.jsonl",
		Short: "Recall of evidence at a KV footprint, through real flashmemd sessions, against recency, random and oracle",
		Long: `eval streams each context of a JSONL dataset (flashmemctl gen) into flashmemd sessions that use
the daemon's text-mode model, tokenised with the text-mode tokenizer, 4 tokens per chunk, 64
chunks per page, with the model's text keys as index keys. For each question it runs the decode
loop of a decoder: the question's tokens are appended, one CYCLE carries the question (the
daemon applies a selection one cycle late, so this cycle's reply is what the decoder has while
it reads the question, and is not measured), then one CYCLE per 64 answer tokens with the
question and the answer so far; answer window k is decoded with the page table of the k-th
answer cycle's reply (the selection made one cycle earlier, plus sink and tail), and its
chunks are written into the reply's tail cells and committed, as a decoder would.

recall_all: share of questions whose every evidence span lies in resident pages at the window
that needs it; recall_any: at least one span; footprint: resident chunks / context chunks
(4 tokens each), sink and tail included, averaged over measured cycles. The footprint is set
through each session's policy: kmax = floor(F · pages), a one-page sink, a tail of a quarter
of kmax, fallback off. Recency, random and oracle selection run client side through the same
indexer selection, over the same chunks and cycles.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if o.data == "" {
				return fmt.Errorf("%w: eval needs --data FILE.jsonl, a dataset: make one with flashmemctl gen --out FILE.jsonl", ErrUsage)
			}
			if _, err := os.Stat(o.data); err != nil {
				return fmt.Errorf("%w: --data %s: %v: make a dataset with flashmemctl gen --out %s", ErrUsage, o.data, errors.Unwrap(err), o.data)
			}
			if o.footprints, err = parseFloats(fps); err != nil {
				return err
			}
			o.modes = splitList(modes)
			o.baselines = splitList(baselines)
			o.asJSON = g.asJSON
			o.progress = cmd.ErrOrStderr()
			t0 := time.Now()
			var rep *eval.Report
			if o.inProcess {
				rep, err = runInProcessEval(o)
			} else if o.expand != "" && o.expand != "auto" {
				return fmt.Errorf("%w: --expand applies to --in-process runs; for the daemon set expand = %q in flashmemd's [indexer] configuration", ErrUsage, o.expand)
			} else {
				c, derr := g.dial(cmd.Context())
				if derr != nil {
					return derr
				}
				defer c.Close()
				rep, err = runDaemonEval(cmd.Context(), c, o)
			}
			if err != nil {
				return err
			}
			if o.asJSON {
				return writeEvalJSON(g.out, rep, o)
			}
			if err := rep.WriteTable(g.out); err != nil {
				return err
			}
			where := "through flashmemd"
			if o.inProcess {
				where = "in process"
			}
			fmt.Fprintf(g.out, "\n%s %s in %.1f s\n", o.data, where, time.Since(t0).Seconds())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.data, "data", "", "dataset JSONL (flashmemctl gen)")
	f.StringVar(&fps, "footprint", "0.10", "target footprint(s), comma-separated, each in (0, 1]")
	f.StringVar(&modes, "modes", eval.MethodCombined, "text-mode scorers run through the daemon: any of lexical,trained,combined,dense (trained: the learned mode, dense: the dense signal alone)")
	f.StringVar(&baselines, "baselines", "recency,random,oracle", "client-side baselines at the same footprint (\"\" for none)")
	f.StringVar(&o.model, "model", "text", "the daemon's text-mode model to open sessions with")
	f.StringVar(&o.modelFile, "model-file", "", "that model's safetensors file, to compute the same keys client side (default: the embedded default model)")
	f.Uint64Var(&o.seed, "seed", 1, "seed of the random baseline")
	f.StringVar(&o.expand, "expand", "auto", "multi-hop expansion of the text-mode scorer (auto = on, on, off); --in-process only, the daemon takes it from its [indexer] expand setting")
	f.BoolVar(&o.inProcess, "in-process", false, "no daemon: score and select in this process (eval.Run), as a cross-check of the daemon-backed numbers")
	return cmd
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func parseFloats(s string) ([]float64, error) {
	var out []float64
	for _, p := range splitList(s) {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || !(f > 0 && f <= 1) {
			return nil, fmt.Errorf("%w: footprint %q not in (0, 1]", ErrUsage, p)
		}
		out = append(out, f)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no footprint", ErrUsage)
	}
	return out, nil
}

// textModes maps eval method names to text-mode query modes.
var textModes = map[string]textmode.Mode{eval.MethodLexical: textmode.Lexical, eval.MethodTrained: textmode.Learned, eval.MethodCombined: textmode.Combined, eval.MethodDense: textmode.Dense}

// evalLayout is the page layout of eval sessions: one KV layer whose chunk
// payload is 8 deterministic bytes (synth), because eval measures selection,
// not bandwidth; 64 chunks per page; one target layer of text keys.
func evalLayout(keyBytes, slots int) proto.Layout {
	return proto.Layout{
		ChunksPerPage: eval.ChunksPerPage, KeyBytes: uint32(keyBytes), TargetLayers: 1, CycleSteps: eval.Tau, ReserveSlots: uint32(slots),
		Layers: []proto.LayerLayout{{RowBytes: eval.ChunksPerPage * 8, Segments: []uint32{8}}},
	}
}

// wirePolicy expresses eval.PolicyFor over the protocol, where 0 means "the
// daemon's default": a policy without a sink (tiny contexts) asks for a
// one-chunk sink instead, which forces page 0.
func wirePolicy(p indexer.Policy) proto.Policy {
	return proto.Policy{
		FirstKeep: uint32(max(p.FirstKeep, 1)), LastKeep: uint32(max(p.LastKeep, 1)), KMax: uint32(p.KMax),
		FallbackRatio: 1, Lookahead: uint32(indexer.DefaultLookahead),
	}
}

// indexerPolicy rebuilds the session's effective policy (INSPECT) for the
// client-side baselines, so they select under exactly the daemon's rules.
func indexerPolicy(p proto.Policy) indexer.Policy {
	ip := indexer.DefaultPolicy()
	ip.FirstKeep, ip.LastKeep, ip.KMax = int(p.FirstKeep), int(p.LastKeep), int(p.KMax)
	ip.KMaxRatio, ip.FallbackRatio, ip.Lookahead = p.KMaxRatio, p.FallbackRatio, int(p.Lookahead)
	if ip.KMaxRatio == 0 {
		ip.KMaxRatio = indexer.DefaultKMaxRatio
	}
	return ip
}

// evalSession is one daemon session (a text mode at a footprint) or one
// client-side baseline request, mirroring the same chunks and cycles.
type evalSession struct {
	method string
	target float64
	// daemon sessions
	id    uint64
	rg    *proto.Region
	mem   []byte
	lease uint64
	tail  map[uint32]uint32
	// baselines
	req    *indexer.Request
	logits []float32
	pol    indexer.Policy
}

func (s *evalSession) daemon() bool { return s.req == nil }

// evalRecord drives one record: a daemon session per (mode, footprint) and a
// baseline request per (baseline, footprint), all fed the same chunks.
type evalRecord struct {
	ctx    context.Context
	c      *proto.Client
	m      *textmode.Model
	o      *evalOpts
	l      proto.Layout
	rng    *rand.Rand
	chunks uint64
	ss     []*evalSession
}

// loadTextModel reads the model file, or the embedded default.
func loadTextModel(path string) (*textmode.Model, error) {
	mb := models.TextModeDefault
	if path != "" {
		var err error
		if mb, err = os.ReadFile(path); err != nil {
			return nil, err
		}
	}
	return textmode.Load(mb)
}

// runInProcessEval is the daemon-less cross-check: the same decode loop
// through indexer selection inside this process.
func runInProcessEval(o evalOpts) (*eval.Report, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	m, err := loadTextModel(o.modelFile)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(o.data)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	exp, err := indexer.ParseExpansion(o.expand)
	if err != nil {
		return nil, fmt.Errorf("%w: --expand: %w", ErrUsage, err)
	}
	var prog *progress
	if o.progress != nil {
		prog = newProgress(o.progress, int64(countRecords(o.data)), "eval records")
		defer prog.done()
	}
	return eval.Run(eval.NewReader(f), eval.RunOptions{Model: m, Footprints: o.footprints, Seed: o.seed,
		Methods: append(slices.Clone(o.modes), o.baselines...), Expand: exp,
		Progress: func(int, string) {
			if prog != nil {
				prog.add(1)
			}
		}})
}

// countRecords counts the non-empty lines of a JSONL file, for the progress
// bar's total (0 when it cannot be read: the reader reports that).
func countRecords(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<30)
	n := 0
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) > 0 {
			n++
		}
	}
	return n
}

func (o *evalOpts) check() error {
	for _, m := range o.modes {
		if _, ok := textModes[m]; !ok {
			return fmt.Errorf("%w: --modes: %q is not lexical, trained or combined", ErrUsage, m)
		}
	}
	for _, b := range o.baselines {
		if b != eval.MethodRecency && b != eval.MethodRandom && b != eval.MethodOracle {
			return fmt.Errorf("%w: --baselines: %q is not recency, random or oracle", ErrUsage, b)
		}
	}
	if len(o.modes) == 0 {
		return fmt.Errorf("%w: --modes is empty", ErrUsage)
	}
	return nil
}

func runDaemonEval(ctx context.Context, c *proto.Client, o evalOpts) (*eval.Report, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	m, err := loadTextModel(o.modelFile)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(o.data)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rd := eval.NewReader(f)
	methods := append(slices.Clone(o.modes), o.baselines...)
	var prog *progress
	if o.progress != nil {
		prog = newProgress(o.progress, int64(countRecords(o.data)), "eval records")
		defer prog.done()
	}
	col := eval.NewCollector()
	rng := rand.New(rand.NewPCG(o.seed, 0x4a4d))
	n := 0
	for {
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		doc := eval.NewDoc(rec.Context)
		col.AddRecord(rec.Task, len(doc.Tokens), o.footprints, methods)
		er := &evalRecord{ctx: ctx, c: c, m: m, o: &o, rng: rng}
		err = er.run(rec, doc, col)
		if cerr := er.close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("record %q (line %d): %w", rec.ID, rd.Line(), err)
		}
		n++
		if prog != nil {
			prog.add(1)
		}
	}
	return col.Report(methods, o.footprints), nil
}

func (er *evalRecord) run(rec *eval.Record, doc *eval.Doc, col *eval.Collector) error {
	ctx, c, m := er.ctx, er.c, er.m
	chunks := doc.Chunks()
	// Questions and answers add chunks after the context; the page count
	// bounds the reserve.
	extra := 0
	pqs := make([]*eval.PreparedQuery, len(rec.Queries))
	for i, q := range rec.Queries {
		pq, err := eval.PrepareQuery(doc, q)
		if err != nil {
			return fmt.Errorf("query %d: %w", i, err)
		}
		pqs[i] = pq
		extra += pq.Windows * eval.Tau / eval.TokensPerChunk
	}
	totalPages := (chunks + extra + eval.ChunksPerPage - 1) / eval.ChunksPerPage
	for _, fp := range er.o.footprints {
		pol := eval.PolicyFor(chunks, fp)
		// The previous lease, this cycle's table and tail, and the
		// background recall of the new selection must fit at once.
		slots := min(totalPages+8, 3*pol.KMax+16)
		l := evalLayout(m.KeyBytes(), slots)
		er.l = l
		wp := wirePolicy(pol)
		var eff *proto.Policy
		for _, mode := range er.o.modes {
			// The decoder writes its answer chunks with the CPU: a host reserve.
			op, err := c.Open(ctx, &proto.Open{Model: er.o.model, Layout: l, Policy: wp, Device: proto.DeviceHostOnly})
			if err != nil {
				return fmt.Errorf("open %s session: %w", mode, err)
			}
			s := &evalSession{method: mode, target: fp, id: op.Session, rg: &op.Region}
			er.ss = append(er.ss, s)
			if s.mem, err = op.Region.Map(); err != nil {
				return err
			}
			if eff == nil {
				in, err := c.Inspect(ctx, proto.AdminTarget{Session: op.Session})
				if err != nil {
					return err
				}
				eff = &in.Policy
			}
		}
		for _, b := range er.o.baselines {
			ip := indexerPolicy(*eff)
			req, err := indexer.NewRequest(&eval.TraceScorer{}, ip)
			if err != nil {
				return err
			}
			er.ss = append(er.ss, &evalSession{method: b, target: fp, req: req, pol: ip})
		}
	}
	if err := er.appendChunks(m.AppendChunkKeys(nil, doc.Tokens), false); err != nil {
		return fmt.Errorf("prefill: %w", err)
	}
	for qi, pq := range pqs {
		// The question travels as the query of one cycle; its tokens are
		// not appended as chunks: the text-mode lexical signal is relative to
		// the best-matching chunk, and the question's own chunks would be it.
		for _, s := range er.ss {
			if !s.daemon() {
				s.logits = eval.BaselineLogits(s.method, int(er.chunks), s.pol, pq, er.rng)
			}
		}
		if _, err := er.cycle(pq, 0); err != nil {
			return fmt.Errorf("query %d question cycle: %w", qi, err)
		}
		covered := make([][]bool, len(er.ss))
		for i := range covered {
			covered[i] = make([]bool, len(pq.Spans))
		}
		for w := range pq.Windows {
			res, err := er.cycle(pq, w*eval.Tau)
			if err != nil {
				return fmt.Errorf("query %d window %d: %w", qi, w, err)
			}
			for i, s := range er.ss {
				col.Cell(rec.Task, s.method, s.target).AddCycle(res[i], int(er.chunks)*eval.TokensPerChunk)
				for j, sp := range pq.Spans {
					if pq.Need[j] == w {
						covered[i][j] = res[i].Covers(sp)
					}
				}
			}
			// The decoder produces this window's answer tokens into the
			// tail cells the reply assigned, then commits them.
			win := pq.Answer[min(w*eval.Tau, len(pq.Answer)):min((w+1)*eval.Tau, len(pq.Answer))]
			if len(win) > 0 {
				if err := er.appendChunks(m.AppendChunkKeys(nil, win), true); err != nil {
					return fmt.Errorf("query %d window %d commit: %w", qi, w, err)
				}
			}
		}
		for i, s := range er.ss {
			col.Cell(rec.Task, s.method, s.target).AddQuery(covered[i])
		}
	}
	return nil
}

// appendChunks feeds chunks with their keys to every session: APPEND through
// the staging region (prefill), or, for decoded chunks, writes into the tail
// cells of the last cycle's reply and COMMIT. Baseline requests get them too
// (their keys only count chunks).
func (er *evalRecord) appendChunks(keys []byte, decoded bool) error {
	kb := uint64(er.l.KeyBytes)
	n := uint64(len(keys)) / kb
	const batch = 4096
	for off := uint64(0); off < n; off += batch {
		k := min(batch, n-off)
		first := er.chunks + off
		kk := keys[off*kb : (off+k)*kb]
		var size uint64
		if !decoded {
			size, _ = er.l.PayloadBytes(k)
			st := er.c.Staging()
			if uint64(len(st)) < size {
				return fmt.Errorf("staging region of %d B is smaller than %d chunks", len(st), k)
			}
			synth.FillAppend(&er.l, 1, first, k, st[:size])
		}
		for _, s := range er.ss {
			if !s.daemon() {
				if err := s.req.AppendKeys(int(first), [][]byte{make([]byte, k*eval.TraceKeyBytes)}); err != nil {
					return err
				}
				continue
			}
			if !decoded {
				if _, err := er.c.Append(er.ctx, &proto.Append{Session: s.id, FirstChunk: first, Count: uint32(k), Length: size, Keys: kk}); err != nil {
					return err
				}
				continue
			}
			for i := uint64(0); i < k; i++ {
				ch := first + i
				slot, ok := s.tail[uint32(ch/eval.ChunksPerPage)]
				if !ok {
					return fmt.Errorf("no tail cell for decoded chunk %d", ch)
				}
				synth.FillCell(&er.l, 1, ch, 0, s.rg.Row(s.mem, 0, slot))
			}
			if _, err := er.c.Commit(er.ctx, &proto.Commit{Session: s.id, FirstChunk: first, Count: uint32(k), Keys: kk}); err != nil {
				return err
			}
		}
	}
	er.chunks += n
	return nil
}

// cycle runs one cycle of every session — one CYCLE frame carrying all the
// daemon sessions (a decoder's batch), Select for the baselines — and returns
// each session's decoder-visible page set. The query is the question plus the
// first answered tokens of the answer.
func (er *evalRecord) cycle(pq *eval.PreparedQuery, answered int) ([]eval.PageSet, error) {
	out := make([]eval.PageSet, len(er.ss))
	var entries []proto.CycleEntry
	var idx []int
	for i, s := range er.ss {
		if !s.daemon() {
			l := s.logits
			if d := int(er.chunks) - len(l); d > 0 {
				l = append(l, slices.Repeat([]float32{-1}, d)...)
				s.logits = l
			}
			cy, err := s.req.Select(l)
			if err != nil {
				return nil, err
			}
			out[i] = eval.PageSet(cy.Use)
			continue
		}
		q := er.m.NewQuery(pq.Question, pq.Answer[:min(answered, len(pq.Answer))], textModes[s.method])
		entries = append(entries, proto.CycleEntry{Session: s.id, Position: er.chunks * eval.TokensPerChunk, Queries: [][]byte{q.AppendBinary(nil, er.m.Config())}})
		idx = append(idx, i)
	}
	res, err := er.c.Cycle(er.ctx, entries)
	if err != nil {
		return nil, err
	}
	var release []uint64
	for j, r := range res {
		s := er.ss[idx[j]]
		if r.Err != nil {
			return nil, fmt.Errorf("%s session %d: %w", s.method, s.id, r.Err)
		}
		if r.Counters.Chunks != er.chunks {
			return nil, fmt.Errorf("%s session %d: daemon has %d chunks, client %d", s.method, s.id, r.Counters.Chunks, er.chunks)
		}
		ps := make(eval.PageSet, len(r.Pages))
		for k, p := range r.Pages {
			ps[k] = p.Page
		}
		out[idx[j]] = ps
		s.tail = map[uint32]uint32{}
		for _, t := range r.Tail {
			s.tail[t.Page] = t.Slot
		}
		if s.lease != 0 {
			release = append(release, s.lease)
		}
		s.lease = r.Lease
	}
	if len(release) > 0 {
		if err := er.c.Release(er.ctx, release...); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// close releases leases, unmaps reserves and deletes the record's sessions.
func (er *evalRecord) close() error {
	var errs []error
	for _, s := range er.ss {
		if !s.daemon() {
			continue
		}
		if s.lease != 0 {
			errs = append(errs, er.c.Release(er.ctx, s.lease))
		}
		if s.mem != nil {
			errs = append(errs, proto.Unmap(s.mem))
		}
		errs = append(errs, s.rg.Close(), er.c.CloseSession(er.ctx, s.id, true))
	}
	er.ss = nil
	return errors.Join(errs...)
}

// evalJSON is one --json line: the first --modes scorer's numbers at one
// footprint for one task, with every other method's beside them.
type evalJSON struct {
	Task      string                `json:"task"`
	Method    string                `json:"method"`
	Target    float64               `json:"target_footprint"`
	Questions int                   `json:"questions"`
	RecallAll float64               `json:"recall_all"`
	RecallAny float64               `json:"recall_any"`
	Footprint float64               `json:"footprint"`
	Compare   map[string]evalMetric `json:"compare,omitempty"`
	// TooSmall counts records whose footprint holds only sink and tail (see
	// eval.Fits), with a note saying so; omitted when 0.
	TooSmall int    `json:"too_small_records,omitempty"`
	Note     string `json:"note,omitempty"`
}

type evalMetric struct {
	RecallAll float64 `json:"recall_all"`
	RecallAny float64 `json:"recall_any"`
	Footprint float64 `json:"footprint"`
}

// writeEvalJSON writes, per footprint, one object per task and a final
// "overall" one.
func writeEvalJSON(w io.Writer, rep *eval.Report, o evalOpts) error {
	var tasks []string
	for _, c := range rep.Cells {
		if c.Task != "overall" && !slices.Contains(tasks, c.Task) {
			tasks = append(tasks, c.Task)
		}
	}
	tasks = append(tasks, "overall")
	primary := o.modes[0]
	methods := append(slices.Clone(o.modes), o.baselines...)
	enc := newJSONLines(w)
	for _, f := range o.footprints {
		for _, t := range tasks {
			c := rep.Get(t, primary, f)
			if c == nil {
				continue
			}
			j := evalJSON{Task: t, Method: primary, Target: f, Questions: c.Queries, RecallAll: c.RecallAll(), RecallAny: c.RecallAny(), Footprint: c.Footprint(), Compare: map[string]evalMetric{}, TooSmall: c.TooSmall}
			if c.TooSmall > 0 {
				j.Note = fmt.Sprintf("%d of %d records: the footprint holds only sink and tail, no page of evidence; their questions count as misses for every method", c.TooSmall, c.Records)
			}
			for _, m := range methods[1:] {
				if o := rep.Get(t, m, f); o != nil {
					j.Compare[m] = evalMetric{o.RecallAll(), o.RecallAny(), o.Footprint()}
				}
			}
			if err := enc.Encode(j); err != nil {
				return err
			}
		}
	}
	return nil
}
