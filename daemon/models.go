package daemon

import (
	"fmt"
	"os"

	"github.com/flashmemory/flashmemory/eval"
	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/indexer/textmode"
	"github.com/flashmemory/flashmemory/models"
)

// loadModels builds every registered Memory-Indexer model: safetensors files,
// random-weight models, text-mode models (the embedded default or files) and
// the trace-replay model. A bad file stops the daemon at start, with the
// loader's message naming the tensor at fault, rather than failing sessions
// later.
func loadModels(ic IndexerConfig) (map[string]indexer.Scorer, error) {
	out := map[string]indexer.Scorer{}
	for _, mc := range ic.Models {
		if mc.Variant == "float" {
			mc.Variant = "trained"
		}
		m, err := indexer.LoadModel(mc.Path, indexer.LoadOptions{Ensemble: mc.Ensemble, Variant: mc.Variant})
		if err != nil {
			return nil, fmt.Errorf("%w: model %q: %v", ErrConfig, mc.Name, err)
		}
		out[mc.Name] = m
	}
	for _, rc := range ic.Random {
		cfg := indexer.ModelConfig{
			Layers: make([]int, max(rc.TargetLayers, 1)),
			Hidden: rc.Hidden, QLoraRank: rc.Rank, Heads: rc.Heads, HeadDim: rc.HeadDim,
		}
		for i := range cfg.Layers {
			cfg.Layers[i] = i
		}
		m, err := indexer.RandomModel(uint64(rc.Seed), cfg)
		if err != nil {
			return nil, fmt.Errorf("%w: random model %q: %v", ErrConfig, rc.Name, err)
		}
		out[rc.Name] = m
	}
	for _, tc := range ic.Text {
		b, src := models.TextModeDefault, "embedded default"
		if tc.Path != "" {
			var err error
			if b, err = os.ReadFile(tc.Path); err != nil {
				return nil, fmt.Errorf("%w: text model %q: %v", ErrConfig, tc.Name, err)
			}
			src = tc.Path
		}
		m, err := textmode.Load(b)
		if err != nil {
			return nil, fmt.Errorf("%w: text model %q (%s): %v", ErrConfig, tc.Name, src, err)
		}
		out[tc.Name] = &textmode.Scorer{Model: m}
	}
	if ic.Trace != "" {
		out[ic.Trace] = &eval.TraceScorer{}
	}
	return out, nil
}
