package eval

import (
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/indexer/textmode"
)

// Method names of the evaluation: three scorers and three baselines.
const (
	MethodLexical  = "lexical"  // text-mode model, lexical signal only
	MethodTrained  = "trained"  // text-mode model, Learned mode: fitted term weighting + dense signal, no hand-set rule
	MethodDense    = "dense"    // text-mode model, trained dense signal only (the "trained" of reports before 2026-12-03)
	MethodCombined = "combined" // text-mode model, both signals
	MethodRecency  = "recency"  // newest pages (all scores below threshold: ties go to newer pages)
	MethodRandom   = "random"   // random pages
	MethodOracle   = "oracle"   // pages holding the most evidence chunks
)

// methodMode is the text-mode model mode of each scorer method.
var methodMode = map[string]textmode.Mode{MethodLexical: textmode.Lexical, MethodTrained: textmode.Learned, MethodCombined: textmode.Combined, MethodDense: textmode.Dense}

// AllMethods in report order.
var AllMethods = []string{MethodLexical, MethodTrained, MethodCombined, MethodRecency, MethodRandom, MethodOracle, MethodDense}

// DefaultFootprints are the footprints the evaluation reports.
var DefaultFootprints = []float64{0.05, 0.10, 0.15}

// Tau is the cycle length in decode steps: one selection per 64 tokens.
const Tau = 64

// PolicyFor returns the Level-1 policy the evaluation uses for a context of
// chunks chunks at a target footprint: KMAX = floor(footprint · pages) (at
// least 1), so the resident set never exceeds the target; a one-page sink
// (LSA's 128-chunk sink scaled down) once KMAX ≥ 4, a one-chunk sink (page 0)
// below; and a tail of whole pages,
// a quarter of KMAX (at least 1, at most LSA's 2048 chunks = 32 pages), so
// sink and tail fit inside the footprint at every context length. Fallback is
// off: the footprint is the controlled variable here.
func PolicyFor(chunks int, footprint float64) indexer.Policy {
	pages := (chunks + ChunksPerPage - 1) / ChunksPerPage
	p := indexer.DefaultPolicy()
	p.KMax = max(1, int(math.Floor(footprint*float64(pages)+1e-9)))
	// Below 4 pages the sink is one chunk, which still forces page 0: a
	// decoder always attends its first tokens, and the daemon reads a
	// first_keep of 0 as its default, so the evaluation asks for 1 (wirePolicy).
	p.FirstKeep = 1
	if p.KMax >= 4 {
		p.FirstKeep = ChunksPerPage
	}
	tailPages := min(max(p.KMax/4, 1), 32)
	p.LastKeep = max(chunks-(pages-tailPages)*ChunksPerPage, 0)
	p.FallbackRatio = 1
	p.Lookahead = 0
	return p
}

// Fits reports whether a context of chunks chunks at footprint leaves room for
// at least one page of evidence beside the forced sink and tail pages. When it
// does not, every method (the oracle too) can only keep sink and tail, and the
// recall of that cell says nothing about the scorer: reports mark it instead of
// printing a 0.
func Fits(chunks int, footprint float64) bool {
	p := PolicyFor(chunks, footprint)
	forced := 0
	for _, f := range forcedPages(chunks, p) {
		if f {
			forced++
		}
	}
	return p.KMax > forced
}

// forcedPages marks the pages the policy always keeps (sink and tail), as
// indexer selection does.
func forcedPages(chunks int, p indexer.Policy) []bool {
	pages := (chunks + ChunksPerPage - 1) / ChunksPerPage
	f := make([]bool, pages)
	for c := 0; c < min(p.FirstKeep, chunks); c += ChunksPerPage {
		f[c/ChunksPerPage] = true
	}
	for pg := max(chunks-p.LastKeep, 0) / ChunksPerPage; pg < pages && p.LastKeep > 0; pg++ {
		f[pg] = true
	}
	return f
}

// RunOptions configures Run.
type RunOptions struct {
	Model      *textmode.Model
	Footprints []float64 // default DefaultFootprints
	Methods    []string  // default AllMethods
	Seed       uint64    // random baseline
	// Expand is the policy's multi-hop expansion (indexer.ExpandAuto: on for
	// the text-mode model).
	Expand indexer.Expansion
	// Progress, if set, is called after each record.
	Progress func(records int, id string)
}

// Cell is the result of one (task, method, footprint) combination.
type Cell struct {
	Task    string
	Method  string
	Target  float64 // target footprint
	Tokens  int     // sum of context tokens over the cell's records (for the mean length)
	Records int
	// TooSmall counts the records whose footprint cannot hold sink, tail and
	// one page of evidence (see Fits).
	TooSmall int
	Tally
}

// Report holds every cell, per task and an "overall" task merging them all.
type Report struct {
	Cells []Cell
}

// Get returns the cell of (task, method, target), or nil.
func (r *Report) Get(task, method string, target float64) *Cell {
	for i := range r.Cells {
		c := &r.Cells[i]
		if c.Task == task && c.Method == method && math.Abs(c.Target-target) < 1e-9 {
			return c
		}
	}
	return nil
}

// Run evaluates every record of the dataset in process: it tokenizes and
// chunks each context, computes the text-mode keys, and for each question runs
// the decode loop of the daemon-backed evaluation without the daemon — one
// cycle with the question, then one per Tau answer tokens revealed (lookahead
// re-selection), each through indexer Level-1 selection. The set applied to
// answer tokens [kτ, (k+1)τ) is the selection of cycle 0 for k = 0 (made at the
// end of prefill, when the question is known) and otherwise the previous
// cycle's selection plus the forced pages (one cycle late, as LSA applies it).
// An evidence span is needed at the window of the first answer token that
// occurs in it (window 0 when none does).
func Run(r *Reader, opts RunOptions) (*Report, error) {
	if opts.Model == nil {
		return nil, fmt.Errorf("%w: no model", ErrBadOptions)
	}
	if len(opts.Footprints) == 0 {
		opts.Footprints = DefaultFootprints
	}
	if len(opts.Methods) == 0 {
		opts.Methods = AllMethods
	}
	for _, f := range opts.Footprints {
		if !(f > 0 && f <= 1) {
			return nil, fmt.Errorf("%w: footprint %v not in (0, 1]", ErrBadOptions, f)
		}
	}
	for _, m := range opts.Methods {
		if !slices.Contains(AllMethods, m) {
			return nil, fmt.Errorf("%w: unknown method %q", ErrBadOptions, m)
		}
	}
	col := NewCollector()
	scorer := &textmode.Scorer{Model: opts.Model}
	rng := rand.New(rand.NewPCG(opts.Seed, 0x4a4d))
	n := 0
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		doc := NewDoc(rec.Context)
		keys := opts.Model.AppendChunkKeys(nil, doc.Tokens)
		col.AddRecord(rec.Task, len(doc.Tokens), opts.Footprints, opts.Methods)
		for qi, q := range rec.Queries {
			ev, err := PrepareQuery(doc, q)
			if err != nil {
				return nil, fmt.Errorf("record %q query %d: %w", rec.ID, qi, err)
			}
			for _, f := range opts.Footprints {
				pol := PolicyFor(doc.Chunks(), f)
				pol.Expand = opts.Expand
				for _, m := range opts.Methods {
					t, err := evalQuery(scorer, keys, doc, ev, pol, m, rng)
					if err != nil {
						return nil, fmt.Errorf("record %q query %d method %s: %w", rec.ID, qi, m, err)
					}
					col.Cell(rec.Task, m, f).Merge(t)
				}
			}
		}
		n++
		if opts.Progress != nil {
			opts.Progress(n, rec.ID)
		}
	}
	return col.Report(opts.Methods, opts.Footprints), nil
}

// Collector gathers cells per (task, method, footprint) as records are
// evaluated, in first-seen task order, and builds the Report with an
// "overall" task merging them.
type Collector struct {
	tasks []string
	cells map[[2]string]map[float64]*Cell
}

// NewCollector returns an empty Collector.
func NewCollector() *Collector { return &Collector{cells: map[[2]string]map[float64]*Cell{}} }

// Cell returns the cell of (task, method, footprint), creating it.
func (c *Collector) Cell(task, method string, f float64) *Cell {
	k := [2]string{task, method}
	if c.cells[k] == nil {
		c.cells[k] = map[float64]*Cell{}
	}
	if c.cells[k][f] == nil {
		c.cells[k][f] = &Cell{Task: task, Method: method, Target: f}
	}
	return c.cells[k][f]
}

// AddRecord counts one record of task with tokens context tokens in every
// (method, footprint) cell.
func (c *Collector) AddRecord(task string, tokens int, footprints []float64, methods []string) {
	if !slices.Contains(c.tasks, task) {
		c.tasks = append(c.tasks, task)
	}
	for _, f := range footprints {
		small := !Fits((tokens+TokensPerChunk-1)/TokensPerChunk, f)
		for _, m := range methods {
			cl := c.Cell(task, m, f)
			cl.Tokens += tokens
			cl.Records++
			if small {
				cl.TooSmall++
			}
		}
	}
}

// Report returns every task's cells, then the "overall" cells.
func (c *Collector) Report(methods []string, footprints []float64) *Report {
	rep := &Report{}
	for _, task := range c.tasks {
		for _, m := range methods {
			for _, f := range footprints {
				cl := c.Cell(task, m, f)
				rep.Cells = append(rep.Cells, *cl)
				o := c.Cell("overall", m, f)
				o.Tokens += cl.Tokens
				o.Records += cl.Records
				o.TooSmall += cl.TooSmall
				o.Merge(&cl.Tally)
			}
		}
	}
	for _, m := range methods {
		for _, f := range footprints {
			rep.Cells = append(rep.Cells, *c.Cell("overall", m, f))
		}
	}
	return rep
}

// PreparedQuery is a question with its evidence mapped to chunks.
type PreparedQuery struct {
	Question, Answer []textmode.Token
	Spans            []ChunkSpan
	Need             []int // answer window that needs each span
	Windows          int   // answer windows of Tau tokens (at least 1)
}

// PrepareQuery tokenizes a question and its answer and maps its evidence to
// chunk spans of doc, each with the answer window that needs it.
func PrepareQuery(doc *Doc, q Query) (*PreparedQuery, error) {
	pq := &PreparedQuery{Question: textmode.Tokenize(q.Question), Answer: textmode.Tokenize(q.Answer)}
	pq.Windows = max(1, (len(pq.Answer)+Tau-1)/Tau)
	for _, e := range q.Evidence {
		sp, err := doc.EvidenceChunks(e)
		if err != nil {
			return nil, err
		}
		pq.Spans = append(pq.Spans, sp)
		pq.Need = append(pq.Need, needWindow(textmode.Tokenize(e), pq.Answer))
	}
	return pq, nil
}

// needWindow is the answer window of the first answer token that occurs in the
// evidence (0 if none does).
func needWindow(evidence, answer []textmode.Token) int {
	ids := map[uint32]bool{}
	for _, t := range evidence {
		ids[t.ID] = true
	}
	for i, t := range answer {
		if ids[t.ID] {
			return i / Tau
		}
	}
	return 0
}

// evalQuery runs the decode loop of one question under one method.
func evalQuery(sc *textmode.Scorer, keys []byte, doc *Doc, pq *PreparedQuery, pol indexer.Policy, method string, rng *rand.Rand) (*Tally, error) {
	req, err := indexer.NewRequest(sc, pol)
	if err != nil {
		return nil, err
	}
	if err := req.AppendKeys(0, [][]byte{keys}); err != nil {
		return nil, err
	}
	chunks := doc.Chunks()
	var logits []float32
	switch method {
	case MethodRecency, MethodRandom, MethodOracle:
		logits = BaselineLogits(method, chunks, pol, pq, rng)
	}
	t := &Tally{}
	covered := make([]bool, len(pq.Spans))
	for w := range pq.Windows {
		var cyc *indexer.Cycle
		switch method {
		case MethodLexical, MethodTrained, MethodCombined, MethodDense:
			q := sc.Model.NewQuery(pq.Question, pq.Answer[:min(w*Tau, len(pq.Answer))], methodMode[method])
			cs, err := indexer.ScoreBatch([]*indexer.Request{req}, []indexer.Query{sc.Query(q)})
			if err != nil {
				return nil, err
			}
			cyc = cs[0]
		default:
			cyc, err = req.Select(logits)
			if err != nil {
				return nil, err
			}
		}
		res := PageSet(cyc.Use)
		if w == 0 {
			res = PageSet(cyc.Selected)
		}
		t.AddCycle(res, len(doc.Tokens))
		for i, sp := range pq.Spans {
			if pq.Need[i] == w {
				covered[i] = res.Covers(sp)
			}
		}
	}
	t.AddQuery(covered)
	return t, nil
}

// baselineLogits expresses a baseline as per-chunk logits, so it goes through
// the same selection (forced sink and tail, KMAX, ties to newer pages):
// recency scores nothing above threshold, so the budget goes to the newest
// pages; random puts whole random pages above threshold, as many as the budget
// leaves after the forced pages; oracle puts exactly the evidence chunks above
// threshold, so the pages with most evidence win.
func BaselineLogits(method string, chunks int, pol indexer.Policy, pq *PreparedQuery, rng *rand.Rand) []float32 {
	l := make([]float32, chunks)
	for i := range l {
		l[i] = -1
	}
	switch method {
	case MethodRandom:
		forced := forcedPages(chunks, pol)
		var free []int
		nf := 0
		for pg, f := range forced {
			if f {
				nf++
			} else {
				free = append(free, pg)
			}
		}
		rng.Shuffle(len(free), func(i, j int) { free[i], free[j] = free[j], free[i] })
		for _, pg := range free[:min(len(free), max(pol.KMax-nf, 0))] {
			for c := pg * ChunksPerPage; c < min((pg+1)*ChunksPerPage, chunks); c++ {
				l[c] = 1
			}
		}
	case MethodOracle:
		for _, sp := range pq.Spans {
			for c := sp.First; c <= sp.Last; c++ {
				l[c] = 1
			}
		}
	}
	return l
}
