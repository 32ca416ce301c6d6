package daemon

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/flashmemory/flashmemory/eval"
	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/indexer/textmode"
	"github.com/flashmemory/flashmemory/models"
	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
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

// Model kinds, as MODELS reports them; they say how keys and queries are
// encoded.
const (
	kindLSA   = "lsa"
	kindText  = "text"
	kindTrace = "trace"
)

// modelKinds names the kind of every registered model.
func modelKinds(ic IndexerConfig) map[string]string {
	out := map[string]string{}
	for _, m := range ic.Models {
		out[m.Name] = kindLSA
	}
	for _, m := range ic.Random {
		out[m.Name] = kindLSA
	}
	for _, m := range ic.Text {
		out[m.Name] = kindText
	}
	if ic.Trace != "" {
		out[ic.Trace] = kindTrace
	}
	return out
}

// modelNames lists the registered models, sorted, for messages.
func (d *Daemon) modelNames() string {
	names := make([]string, 0, len(d.models))
	for n := range d.models {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// listModels answers MODELS.
func (d *Daemon) listModels() *proto.ModelsReply {
	lim := d.cfg.Limits
	r := &proto.ModelsReply{
		DefaultModel: d.cfg.Indexer.DefaultModel,
		Limits: proto.ServerLimits{
			MaxFrameBytes: lim.MaxFrameBytes, StagingBytes: lim.StagingBytes, MaxCycleEntries: proto.MaxCycleEntries,
			MaxConns: lim.MaxConns, MaxConnsPerUID: lim.MaxConnsPerUID, AdminReservedConns: lim.AdminReservedConns,
			MaxSessions: lim.MaxSessions, MaxSessionsPerUID: lim.MaxSessionsPerUID, MaxSessionsPerConn: lim.MaxSessionsPerConn,
			MaxSessionBytes: lim.MaxSessionBytes, MaxReserveBytes: lim.MaxReserveBytes, MaxHostReserveBytes: lim.MaxHostReserveBytes,
			MaxLayers: lim.MaxLayers, MaxRowBytes: lim.MaxRowBytes,
			MaxReserveSlots: tiers.MaxSlots, MaxChunks: indexer.DefaultMaxChunks,
			LeaseTimeout:     time.Duration(lim.LeaseTimeout).Seconds(),
			DetachedTTL:      time.Duration(lim.DetachedTTL).Seconds(),
			HandshakeTimeout: time.Duration(lim.HandshakeTimeout).Seconds(),
			IdleTimeout:      time.Duration(lim.IdleTimeout).Seconds(),
			FrameTimeout:     time.Duration(lim.FrameTimeout).Seconds(),
		},
	}
	for name, sc := range d.models {
		r.Models = append(r.Models, proto.ModelInfo{
			Name: name, Kind: d.kinds[name], QueryBytes: sc.QueryBytes(), KeyBytes: sc.KeyBytes(),
			TargetLayers: len(sc.Layers()), Layers: slices.Clone(sc.Layers()), Default: name == d.cfg.Indexer.DefaultModel,
		})
	}
	sort.Slice(r.Models, func(i, j int) bool { return r.Models[i].Name < r.Models[j].Name })
	return r
}

// checkFiniteKeys rejects LSA index keys holding a NaN fp8 code (0x7F or
// 0xFF) or a non-finite scale: they would score as NaN and poison every
// selection of the session.
func checkFiniteKeys(kind string, keyBytes int, keys []byte) error {
	if kind != kindLSA || keyBytes <= 4 {
		return nil
	}
	for off := 0; off+keyBytes <= len(keys); off += keyBytes {
		k := keys[off : off+keyBytes]
		for j, c := range k[:keyBytes-4] {
			if c&0x7f == 0x7f {
				return proto.CodeBadRequest.Errorf("index key %d: byte %d is an fp8 NaN (%#02x); send finite keys", off/keyBytes, j, c)
			}
		}
		if s := math.Float32frombits(binary.LittleEndian.Uint32(k[keyBytes-4:])); math.IsNaN(float64(s)) || math.IsInf(float64(s), 0) {
			return proto.CodeBadRequest.Errorf("index key %d: scale is %v; send finite keys", off/keyBytes, s)
		}
	}
	return nil
}

// checkFiniteQuery rejects an LSA query (bf16 hidden state) holding a NaN
// or an infinity.
func checkFiniteQuery(kind string, layer int, q []byte) error {
	if kind != kindLSA {
		return nil
	}
	for i := 0; i+1 < len(q); i += 2 {
		if v := binary.LittleEndian.Uint16(q[i:]); v&0x7f80 == 0x7f80 {
			return proto.CodeBadRequest.Errorf("query of target layer %d: element %d is not finite (bf16 %#04x); send finite hidden states", layer, i/2, v)
		}
	}
	return nil
}
