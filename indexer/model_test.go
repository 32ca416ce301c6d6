package indexer

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flashmemory/flashmemory/internal/safetensors"
)

// smallConfig is a reduced configuration that keeps tests fast.
func smallConfig() ModelConfig {
	return ModelConfig{Layers: []int{10, 12, 20}, Hidden: 64, QLoraRank: 32, Heads: 4, HeadDim: 128}
}

func mustRandomModel(t testing.TB, seed uint64, cfg ModelConfig) *Model {
	t.Helper()
	m, err := RandomModel(seed, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestModelRoundTrip(t *testing.T) {
	cfg := smallConfig()
	cfg.Ensemble, cfg.Variant, cfg.RopeBase = EnsembleMean, VariantFP8Q, 10000
	m := mustRandomModel(t, 7, cfg)
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := m.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := LoadModel(path, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := cfg.withDefaults()
	if c := got.Config(); !configEqual(c, want) {
		t.Fatalf("config %+v, want %+v", c, want)
	}
	for i := range m.layers {
		a, b := m.layers[i], got.layers[i]
		if !slices.Equal(a.wqA.float32s(), b.wqA.float32s()) || !slices.Equal(a.wqB.float32s(), b.wqB.float32s()) ||
			!slices.Equal(a.qNorm.float32s(), b.qNorm.float32s()) || !slices.Equal(a.wProj.float32s(), b.wProj.float32s()) {
			t.Fatalf("layer %d weights differ after save/load", i)
		}
	}
	// Options override the file.
	got, err = LoadModel(path, LoadOptions{Ensemble: "max", Variant: "trained"})
	if err != nil {
		t.Fatal(err)
	}
	if got.Ensemble() != EnsembleMax || got.Config().Variant != VariantTrained {
		t.Fatalf("options not applied: %v %v", got.Ensemble(), got.Config().Variant)
	}
	if _, err := LoadModel(path, LoadOptions{Ensemble: "sum"}); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("bad ensemble option: %v", err)
	}
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.safetensors")
	if err := os.WriteFile(cut, whole[:len(whole)-1], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadModel(cut, LoadOptions{}); !errors.Is(err, ErrBadModel) || !strings.Contains(err.Error(), "truncated or corrupt file") ||
		!strings.Contains(err.Error(), "l20.weights_proj") {
		t.Fatalf("truncated file: %v", err)
	}
	if _, err := LoadModel(filepath.Join(t.TempDir(), "absent"), LoadOptions{}); !errors.Is(err, ErrBadModel) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func configEqual(a, b ModelConfig) bool {
	return cmp.Equal(a, b)
}

func TestLoadGoldenModel(t *testing.T) {
	path := goldenPath(t)
	m, err := LoadModel(path, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := m.Config()
	if !slices.Equal(c.Layers, []int{10, 12, 20}) || c.Hidden != 512 || c.QLoraRank != 128 || c.Heads != 8 || c.HeadDim != 128 ||
		c.KeyBytes() != 132 || c.RopeBase != 160000 || c.NormEps != 1e-6 || c.Ensemble != EnsembleMax {
		t.Fatalf("golden config %+v", c)
	}
}

// tensorsOf returns the tensors and metadata of a saved model, for mutation.
func tensorsOf(t *testing.T, m *Model) ([]safetensors.Tensor, map[string]string) {
	t.Helper()
	var b bytes.Buffer
	if err := m.WriteSafetensors(&b); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Parse(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	var ts []safetensors.Tensor
	for _, n := range f.Names() {
		tn, _ := f.Tensor(n)
		tn.Data = slices.Clone(tn.Data)
		ts = append(ts, tn)
	}
	return ts, f.Metadata()
}

func writeFile(t *testing.T, ts []safetensors.Tensor, md map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := safetensors.Write(&b, ts, md); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestParseModelErrors(t *testing.T) {
	m := mustRandomModel(t, 1, ModelConfig{Layers: []int{3, 5}, Hidden: 16, QLoraRank: 8, Heads: 2, HeadDim: 16, RopeDim: 8})
	edit := func(f func(ts []safetensors.Tensor, md map[string]string) ([]safetensors.Tensor, map[string]string)) []byte {
		ts, md := tensorsOf(t, m)
		ts, md = f(ts, md)
		return writeFile(t, ts, md)
	}
	find := func(ts []safetensors.Tensor, name string) int {
		return slices.IndexFunc(ts, func(x safetensors.Tensor) bool { return x.Name == name })
	}
	tests := []struct {
		name string
		buf  []byte
		want string
	}{
		{"missing tensor", edit(func(ts []safetensors.Tensor, md map[string]string) ([]safetensors.Tensor, map[string]string) {
			return slices.Delete(ts, find(ts, "l5.wq_b"), find(ts, "l5.wq_b")+1), md
		}), "tensor l5.wq_b is missing"},
		{"wrong shape in second layer", edit(func(ts []safetensors.Tensor, md map[string]string) ([]safetensors.Tensor, map[string]string) {
			i := find(ts, "l5.q_norm_weight")
			ts[i].Shape, ts[i].Data = []int{7}, ts[i].Data[:28]
			return ts, md
		}), "tensor l5.q_norm_weight has shape [7], want [8]"},
		{"wrong dtype", edit(func(ts []safetensors.Tensor, md map[string]string) ([]safetensors.Tensor, map[string]string) {
			i := find(ts, "l3.weights_proj")
			ts[i].DType = safetensors.I32
			return ts, md
		}), "tensor l3.weights_proj has dtype I32, want F32, BF16 or F16"},
		{"weights_proj disagrees with hidden", edit(func(ts []safetensors.Tensor, md map[string]string) ([]safetensors.Tensor, map[string]string) {
			i := find(ts, "l3.weights_proj")
			ts[i].Shape = []int{4, 8}
			return ts, md
		}), "tensor l3.weights_proj has shape [4 8], want [n_heads, 16]"},
		{"metadata disagrees with shapes", edit(func(ts []safetensors.Tensor, md map[string]string) ([]safetensors.Tensor, map[string]string) {
			md["hidden"] = "4096"
			return ts, md
		}), "metadata hidden is \"4096\" but the tensor shapes give 16"},
		{"metadata names a layer that is not there", edit(func(ts []safetensors.Tensor, md map[string]string) ([]safetensors.Tensor, map[string]string) {
			md["layers"] = "3,5,7"
			return ts, md
		}), "tensor l7.wq_a is missing"},
		{"NaN weight", edit(func(ts []safetensors.Tensor, md map[string]string) ([]safetensors.Tensor, map[string]string) {
			i := find(ts, "l5.wq_a")
			copy(ts[i].Data[40:], []byte{0, 0, 0xc0, 0x7f})
			return ts, md
		}), "tensor l5.wq_a element 10 is NaN"},
		{"unknown format version", edit(func(ts []safetensors.Tensor, md map[string]string) ([]safetensors.Tensor, map[string]string) {
			md["format_version"] = "9"
			return ts, md
		}), "format_version \"9\""},
		{"head dim not a power of two", edit(func(ts []safetensors.Tensor, md map[string]string) ([]safetensors.Tensor, map[string]string) {
			md["head_dim"] = "12"
			return ts, md
		}), "head_dim"},
		{"no layers", writeFile(t, nil, nil), "no target layers"},
		{"truncated", func() []byte {
			ts, md := tensorsOf(t, m)
			b := writeFile(t, ts, md)
			return b[:len(b)-10]
		}(), "truncated or corrupt file: safetensors: bad data offsets: tensor \"l5.weights_proj\": [3264, 3392) outside data section of 3382 bytes"},
		{"empty", nil, "truncated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseModel(tc.buf, LoadOptions{})
			if !errors.Is(err, ErrBadModel) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want ErrBadModel containing %q", err, tc.want)
			}
		})
	}
}

func TestLoadBF16AndF16(t *testing.T) {
	m := mustRandomModel(t, 2, ModelConfig{Layers: []int{1}, Hidden: 16, QLoraRank: 8, Heads: 2, HeadDim: 16, RopeDim: 8})
	for _, dt := range []safetensors.DType{safetensors.BF16, safetensors.F16} {
		ts, md := tensorsOf(t, m)
		for i := range ts {
			ts[i] = halfTensor(ts[i], dt)
		}
		got, err := ParseModel(writeFile(t, ts, md), LoadOptions{})
		if err != nil {
			t.Fatalf("%s: %v", dt, err)
		}
		if dt == safetensors.BF16 {
			// Kept as bf16 and re-exported as BF16, bit for bit.
			if got.layers[0].wqB.bf16 == nil {
				t.Fatal("BF16 weights not kept as bf16")
			}
			ts2, _ := tensorsOf(t, got)
			for i := range ts {
				if ts2[i].DType != safetensors.BF16 || !slices.Equal(ts2[i].Data, ts[i].Data) {
					t.Fatalf("re-export of %s: dtype %s, bytes equal %v", ts[i].Name, ts2[i].DType, slices.Equal(ts2[i].Data, ts[i].Data))
				}
			}
		}
		gotA := got.layers[0].wqA.float32s()
		for j, w := range m.layers[0].wqA.float32s() {
			if d := gotA[j] - w; d > 0.01 || d < -0.01 {
				t.Fatalf("%s: wq_a[%d] = %v, want ≈ %v", dt, j, gotA[j], w)
			}
		}
	}
}

// TestConvertScriptOutputLoads runs scripts/convert_checkpoint.py on its synthetic weights
// (no torch needed) and loads the result: names, metadata and values must match what the
// script documents.
func TestConvertScriptOutputLoads(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found: the conversion script cannot be checked here")
	}
	root := repoRoot(t)
	out := filepath.Join(t.TempDir(), "syn.safetensors")
	for _, args := range [][]string{{"--selftest"}, {"--synthetic", out, "--ensemble", "mean"}} {
		cmd := exec.Command(py, append([]string{filepath.Join(root, "scripts", "convert_checkpoint.py")}, args...)...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("convert_checkpoint.py %v: %v\n%s", args, err, b)
		}
	}
	m, err := LoadModel(out, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := m.Config()
	if !slices.Equal(c.Layers, []int{10, 12, 20}) || c.Hidden != 64 || c.QLoraRank != 32 || c.Heads != 4 || c.HeadDim != 128 || c.Ensemble != EnsembleMean {
		t.Fatalf("config %+v", c)
	}
	// Element i of layer position li, tensor position si: ((i·7919 + s·104729) mod 2001 − 1000)/4000
	// with s = si + 1 + 10·li, stored as bf16.
	pattern := func(i, s int) float32 { return float32((i*7919+s*104729)%2001-1000) / 4000 }
	for li := range c.Layers {
		lw := m.layers[li]
		for si, v := range [][]float32{lw.wqA.float32s(), lw.wqB.float32s(), lw.qNorm.float32s(), lw.wProj.float32s()} {
			for _, i := range []int{0, 1, 17, len(v) - 1} {
				want := pattern(i, si+1+10*li)
				if d := v[i] - want; d > 0.002 || d < -0.002 {
					t.Fatalf("layer %d tensor %d element %d = %v, want ≈ %v", c.Layers[li], si, i, v[i], want)
				}
			}
		}
	}
}
