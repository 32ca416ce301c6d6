package cuda

import (
	"bytes"
	"os"
	"regexp"
	"testing"

	"github.com/flashmemory/flashmemory/internal/twintest"
)

// The default build must offer exactly the cuda build's API, so packages above compile
// unchanged either way.
func TestNoCUDATwinMatchesAPI(t *testing.T) {
	twintest.Check(t, 40, []string{"cuda.go", "gather.go"}, []string{"nocuda.go"})
}

func TestSplitDescs(t *testing.T) {
	tests := []struct {
		name  string
		in    []CopyDesc
		piece uint64
		want  []CopyDesc
	}{
		{"empty", nil, 64, nil},
		{"short rows kept", []CopyDesc{{0, 1000, 16}, {64, 2000, 64}}, 64,
			[]CopyDesc{{0, 1000, 16}, {64, 2000, 64}}},
		{"long row cut evenly", []CopyDesc{{0, 1000, 150}}, 64,
			[]CopyDesc{{0, 1000, 64}, {64, 1064, 64}, {128, 1128, 22}}},
		{"DeepSeek row in three equal pieces", []CopyDesc{{0, 1 << 20, 37440}}, 16384,
			[]CopyDesc{{0, 1 << 20, 12480}, {12480, 1<<20 + 12480, 12480}, {24960, 1<<20 + 24960, 12480}}},
		{"uneven split keeps 16-byte pieces", []CopyDesc{{0, 0, 100}}, 48,
			[]CopyDesc{{0, 0, 48}, {48, 48, 48}, {96, 96, 4}}},
		{"exact multiple", []CopyDesc{{16, 32, 128}}, 64,
			[]CopyDesc{{16, 32, 64}, {80, 96, 64}}},
		{"zero length dropped", []CopyDesc{{0, 0, 0}, {5, 7, 3}}, 64,
			[]CopyDesc{{5, 7, 3}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := splitDescs(nil, tc.in, tc.piece)
			if n := countPieces(tc.in, tc.piece); n != len(got) {
				t.Errorf("countPieces = %d, split made %d", n, len(got))
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			var sumIn, sumOut uint64
			for _, c := range tc.in {
				sumIn += c.Len
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("piece %d: got %+v, want %+v", i, got[i], tc.want[i])
				}
				sumOut += got[i].Len
			}
			if sumIn != sumOut {
				t.Errorf("bytes: in %d, out %d", sumIn, sumOut)
			}
		})
	}
}

func TestArgEncoding(t *testing.T) {
	tests := []struct {
		name string
		got  Arg
		want uint64
	}{
		{"i32 negative low half", ArgI32(-2), 0x00000000fffffffe},
		{"u32", ArgU32(7), 7},
		{"f32 one", ArgF32(1), 0x3f800000},
		{"ptr", ArgPtr(0x7f0012345678), 0x7f0012345678},
		{"u64", ArgU64(1 << 40), 1 << 40},
	}
	for _, tc := range tests {
		if uint64(tc.got) != tc.want {
			t.Errorf("%s: got %#x, want %#x", tc.name, uint64(tc.got), tc.want)
		}
	}
}

// ptxEntries lists the kernels a PTX file defines.
func ptxEntries(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range regexp.MustCompile(`\.entry\s+(\w+)\s*\(`).FindAllSubmatch(b, -1) {
		out[string(m[1])] = true
	}
	return out
}

// The committed PTX must define every kernel the Go code launches (a stale PTX fails at
// run time on the GPU machine only) and come from the GPU machine's nvcc, as gather.cu says.
func TestCommittedPTXHasKernels(t *testing.T) {
	for _, f := range []string{"gather_sm80.ptx", "gather_sm90.ptx"} {
		entries := ptxEntries(t, f)
		for kind, name := range gatherFuncs {
			if !entries[name] {
				t.Errorf("%s lacks %s (%s); rebuild with scripts/build-ptx.sh on the GPU machine", f, name, kind)
			}
		}
		b, _ := os.ReadFile(f)
		if !bytes.Contains(b, []byte("Cuda compilation tools, release 13.")) {
			t.Errorf("%s was not built by the GPU machine's nvcc 13", f)
		}
	}
}
