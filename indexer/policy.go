package indexer

import (
	"fmt"
	"math"
)

// Policy configures Level-1 selection, fallback and lookahead for one request. Start from
// DefaultPolicy and override fields; the zero value is not valid (a zero ChunksPerPage has no
// meaning) and NewRequest rejects it.
type Policy struct {
	// ChunksPerPage is the recall granularity (LSA: 64 chunks = 256 tokens).
	ChunksPerPage int
	// FirstKeep is the sink: the first FirstKeep chunks are always kept (LSA default 128).
	FirstKeep int
	// LastKeep is the recent tail: the last LastKeep chunks are always kept (LSA default 2048,
	// about 8K tokens). Small contexts (tests, 32K tokens = 8192 chunks) are dominated by the
	// defaults, so lower it there.
	LastKeep int
	// Threshold is the probability a chunk's ensembled score must exceed to count as above
	// threshold (LSA: 0.5, i.e. logit > 0). Compared in logit space, so it is exact.
	Threshold float64
	// KMax, when positive, is the fixed number of pages kept per cycle.
	KMax int
	// KMaxRatio is used when KMax is 0: KMAX = ceil(KMaxRatio · pages). The default 3/32
	// reproduces the published 96 / 192 / 384 pages at 256K / 512K / 1M tokens exactly.
	KMaxRatio float64
	// FallbackRatio: once Σ(above-threshold chunks outside sink and tail) / Σ(chunks outside
	// sink and tail), summed over all cycles, exceeds it, the request switches to full
	// residency for good. A value ≥ 1 disables fallback (the fraction never exceeds 1).
	FallbackRatio float64
	// Lookahead is the maximum length of the ranked lookahead candidate list (0 disables it).
	Lookahead int
	// LookaheadAlpha is the weight of the newest cycle in the per-page EWMA of page scores
	// that the lookahead ranking uses to detect rising pages, in (0, 1].
	LookaheadAlpha float64
	// LookaheadTrend weighs the trend in the lookahead priority
	// score + LookaheadTrend·(score − EWMA); 0 ranks by the current score alone.
	LookaheadTrend float64
	// MaxChunks bounds the chunks a request accepts, so that a misbehaving client (or a
	// corrupt persisted state) cannot make the daemon allocate without limit.
	MaxChunks int
	// Expand says whether the scorer may expand a cycle's query with what its first scoring
	// pass kept and score again within the same cycle (multi-hop evidence: a chain whose
	// later links share no word with the question). ExpandAuto leaves it to the model kind:
	// on for text-mode models, off for the LSA indexer, whose scores stay bit-identical to
	// the reference unless ExpandOn asks otherwise.
	Expand Expansion
}

// Expansion is the multi-hop expansion setting of a Policy.
type Expansion uint8

const (
	// ExpandAuto is the model kind's default.
	ExpandAuto Expansion = iota
	// ExpandOff scores the query alone.
	ExpandOff
	// ExpandOn expands where the model kind can.
	ExpandOn
)

// String returns "auto", "off" or "on".
func (e Expansion) String() string {
	switch e {
	case ExpandAuto:
		return "auto"
	case ExpandOff:
		return "off"
	case ExpandOn:
		return "on"
	}
	return fmt.Sprintf("Expansion(%d)", uint8(e))
}

// ParseExpansion parses "auto" (or ""), "off" or "on".
func ParseExpansion(s string) (Expansion, error) {
	switch s {
	case "", "auto":
		return ExpandAuto, nil
	case "off":
		return ExpandOff, nil
	case "on":
		return ExpandOn, nil
	}
	return 0, fmt.Errorf("%w: expand %q is not auto, on or off", ErrBadPolicy, s)
}

// On resolves the setting for a model kind whose default is def.
func (e Expansion) On(def bool) bool {
	switch e {
	case ExpandOn:
		return true
	case ExpandOff:
		return false
	}
	return def
}

// Default policy values, from LSA.md where it gives one.
const (
	DefaultChunksPerPage  = 64
	DefaultFirstKeep      = 128
	DefaultLastKeep       = 2048
	DefaultThreshold      = 0.5
	DefaultKMaxRatio      = 3.0 / 32.0
	DefaultFallbackRatio  = 0.25
	DefaultLookahead      = 32
	DefaultLookaheadAlpha = 0.5
	DefaultLookaheadTrend = 1.0
	// DefaultMaxChunks is 4M chunks = 16M tokens, 16× the longest published context.
	DefaultMaxChunks = 1 << 22
)

// DefaultPolicy returns the published Level-1 policy: 64-chunk pages, sink 128, tail 2048,
// threshold 0.5, KMAX = ceil(3/32 · pages), fallback at 25 %, 32 lookahead candidates.
func DefaultPolicy() Policy {
	return Policy{
		ChunksPerPage:  DefaultChunksPerPage,
		FirstKeep:      DefaultFirstKeep,
		LastKeep:       DefaultLastKeep,
		Threshold:      DefaultThreshold,
		KMaxRatio:      DefaultKMaxRatio,
		FallbackRatio:  DefaultFallbackRatio,
		Lookahead:      DefaultLookahead,
		LookaheadAlpha: DefaultLookaheadAlpha,
		LookaheadTrend: DefaultLookaheadTrend,
		MaxChunks:      DefaultMaxChunks,
	}
}

// Validate reports the first field outside its range, wrapped in ErrBadPolicy.
func (p Policy) Validate() error {
	switch {
	case p.ChunksPerPage <= 0 || p.ChunksPerPage > 1<<16:
		return fmt.Errorf("%w: ChunksPerPage %d not in [1, 65536]", ErrBadPolicy, p.ChunksPerPage)
	case p.FirstKeep < 0:
		return fmt.Errorf("%w: FirstKeep %d < 0", ErrBadPolicy, p.FirstKeep)
	case p.LastKeep < 0:
		return fmt.Errorf("%w: LastKeep %d < 0", ErrBadPolicy, p.LastKeep)
	case !(p.Threshold > 0 && p.Threshold < 1):
		return fmt.Errorf("%w: Threshold %v not in (0, 1)", ErrBadPolicy, p.Threshold)
	case p.KMax < 0:
		return fmt.Errorf("%w: KMax %d < 0", ErrBadPolicy, p.KMax)
	case p.KMax == 0 && !(p.KMaxRatio > 0 && p.KMaxRatio <= 1):
		return fmt.Errorf("%w: KMax is 0 and KMaxRatio %v not in (0, 1]", ErrBadPolicy, p.KMaxRatio)
	case !(p.FallbackRatio >= 0) || math.IsInf(p.FallbackRatio, 0):
		return fmt.Errorf("%w: FallbackRatio %v not finite and ≥ 0", ErrBadPolicy, p.FallbackRatio)
	case p.Lookahead < 0:
		return fmt.Errorf("%w: Lookahead %d < 0", ErrBadPolicy, p.Lookahead)
	case !(p.LookaheadAlpha > 0 && p.LookaheadAlpha <= 1):
		return fmt.Errorf("%w: LookaheadAlpha %v not in (0, 1]", ErrBadPolicy, p.LookaheadAlpha)
	case !(p.LookaheadTrend >= 0) || math.IsInf(p.LookaheadTrend, 0):
		return fmt.Errorf("%w: LookaheadTrend %v not finite and ≥ 0", ErrBadPolicy, p.LookaheadTrend)
	case p.MaxChunks <= 0:
		return fmt.Errorf("%w: MaxChunks %d ≤ 0", ErrBadPolicy, p.MaxChunks)
	case p.Expand > ExpandOn:
		return fmt.Errorf("%w: Expand %d not auto, off or on", ErrBadPolicy, p.Expand)
	}
	return nil
}

// thresholdLogit is the logit equivalent of Threshold: sigmoid is monotonic, so
// sigmoid(x) > t ⇔ x > ln(t / (1 − t)), which is exactly 0 for the default 0.5 and avoids
// the float32 sigmoid rounding tiny positive logits to exactly 0.5.
func (p Policy) thresholdLogit() float32 {
	return float32(math.Log(p.Threshold / (1 - p.Threshold)))
}

// kmax is the number of pages kept for a context of the given page count.
func (p Policy) kmax(pages int) int {
	if p.KMax > 0 {
		return p.KMax
	}
	return int(math.Ceil(p.KMaxRatio * float64(pages)))
}
