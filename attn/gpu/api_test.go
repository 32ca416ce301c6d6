package gpu

import (
	"bytes"
	"errors"
	"go/ast"
	"go/parser"
	"go/printer"
	"go/token"
	"os"
	"testing"

	"github.com/flashmemory/flashmemory/internal/cuda"
)

func exportedFuncs(t *testing.T, files ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, file := range files {
		exportedFuncsOf(t, file, out)
	}
	return out
}

func exportedFuncsOf(t *testing.T, file string, out map[string]string) {
	t.Helper()
	fset := token.NewFileSet()
	af, err := parser.ParseFile(fset, file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, decl := range af.Decls {
		fd, ok := decl.(*ast.FuncDecl)
		if !ok || !fd.Name.IsExported() {
			continue
		}
		key := fd.Name.Name
		if fd.Recv != nil {
			var b bytes.Buffer
			printer.Fprint(&b, fset, fd.Recv.List[0].Type)
			key = b.String() + "." + key
		}
		var b bytes.Buffer
		printer.Fprint(&b, fset, fd.Type)
		out[key] = b.String()
	}
}

func TestNoCUDATwinMatchesAPI(t *testing.T) {
	a, b := exportedFuncs(t, "scorer.go", "proj.go"), exportedFuncs(t, "scorer_nocuda.go", "proj_nocuda.go")
	if len(a) < 10 {
		t.Fatalf("parsed only %d exported funcs from scorer.go", len(a))
	}
	for k, sig := range a {
		if b[k] != sig {
			t.Errorf("%s: cuda %q, nocuda %q", k, sig, b[k])
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			t.Errorf("%s only in the nocuda build", k)
		}
	}
	if !cuda.Available {
		if _, err := NewScorer(nil); !errors.Is(err, ErrNoCUDA) {
			t.Errorf("NewScorer: %v, want ErrNoCUDA", err)
		}
	}
}

// The committed PTX must define the scorer kernel and come from the GPU machine's nvcc.
func TestCommittedPTXHasKernel(t *testing.T) {
	for _, c := range []struct {
		file    string
		kernels []string
	}{
		{"score_sm80.ptx", []string{"fm_score"}}, {"score_sm90.ptx", []string{"fm_score"}},
		{"proj_sm80.ptx", []string{"fm_proj_f32", "fm_proj_bf16"}}, {"proj_sm90.ptx", []string{"fm_proj_f32", "fm_proj_bf16"}},
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
