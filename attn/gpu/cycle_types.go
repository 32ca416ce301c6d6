package gpu

// MaxCycleLayers is the most target layers a Cycle scores in one launch (MAXL in cycle.cu).
const MaxCycleLayers = 8

// MaxCycleChunksPerPage bounds the page size a Cycle selects on (page scores travel as bytes).
const MaxCycleChunksPerPage = 255

// CycleParams are the selection parameters of a batch (the requests' shared policy).
type CycleParams struct {
	// Mean ensembles the target layers by the mean probability (indexer EnsembleMean);
	// otherwise by the maximum logit, NaN propagating.
	Mean bool
	// ThresholdLogit: a chunk is above threshold when its ensembled logit exceeds it.
	ThresholdLogit float32
	// ChunksPerPage is the page size in chunks, 1 … MaxCycleChunksPerPage.
	ChunksPerPage int
}

// CycleRequest is one request of a batch: its keys and query in, its page scores,
// selection and counters out.
type CycleRequest struct {
	Keys     []*Keys  // per target layer, all of the same length n ≥ 1
	Hidden   [][]byte // per target layer, the hidden state as little-endian bf16
	Position int64
	// SinkEnd and TailStart bound the sink [0, SinkEnd) and tail [TailStart, n) in chunks.
	SinkEnd, TailStart int
	// Need is how many pages besides the forced ones to select (KMAX − forced pages).
	Need int
	// Logits, when not nil, receives every layer's logits ([layer][n]; tests and tools).
	Logits [][]float32

	// Results. PageScores and Selected are len ceil(n / ChunksPerPage), reused if large enough.
	PageScores     []uint8
	Selected       []bool
	AboveThreshold int // chunks above threshold
	AboveOutside   int // of them, outside sink and tail
	SelectedCount  int
}
