package gpu

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/flashmemory/flashmemory/internal/cuda"
	"github.com/flashmemory/flashmemory/internal/twintest"
)

func TestNoCUDATwinMatchesAPI(t *testing.T) {
	twintest.Check(t, 14, []string{"scorer.go", "proj.go", "cycle.go"}, []string{"scorer_nocuda.go", "proj_nocuda.go", "cycle_nocuda.go"})
	if !cuda.Available {
		if _, err := NewScorer(nil); !errors.Is(err, ErrNoCUDA) {
			t.Errorf("NewScorer: %v, want ErrNoCUDA", err)
		}
	}
}

var cycleKernels = []string{"fm_cyc_proj", "fm_cyc_norm", "fm_cyc_qpost", "fm_cyc_score", "fm_cyc_select"}

// The committed PTX must define the scorer kernel and come from the GPU machine's nvcc.
func TestCommittedPTXHasKernel(t *testing.T) {
	for _, c := range []struct {
		file    string
		kernels []string
	}{
		{"score_sm80.ptx", []string{"fm_score"}}, {"score_sm90.ptx", []string{"fm_score"}},
		{"proj_sm80.ptx", []string{"fm_proj_f32", "fm_proj_bf16"}}, {"proj_sm90.ptx", []string{"fm_proj_f32", "fm_proj_bf16"}},
		{"cycle_sm80.ptx", cycleKernels}, {"cycle_sm90.ptx", cycleKernels},
	} {
		b, err := os.ReadFile(c.file)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range c.kernels {
			if !bytes.Contains(b, []byte(".entry "+k+"(")) {
				t.Errorf("%s lacks %s", c.file, k)
			}
		}
		if !bytes.Contains(b, []byte("Cuda compilation tools, release 13.")) {
			t.Errorf("%s was not built by the GPU machine's nvcc 13", c.file)
		}
	}
}
