package textmode

import (
	"math"
	"strings"
	"testing"
	"unicode/utf8"
)

func texts(s string, toks []Token) []string {
	out := make([]string, len(toks))
	for i, t := range toks {
		out[i] = s[t.Start:t.End]
	}
	return out
}

func TestTokenize(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"   \n\t", nil},
		{"Hello, world!", []string{"Hello", ",", "world", "!"}},
		{"shiny-apple is: 1234567.", []string{"shiny", "-", "apple", "is", ":", "123", "456", "7", "."}},
		{"abc123def", []string{"abc", "123", "def"}},
		{"internationalization", []string{"internatio", "nalization"}},
		{"naïve café", []string{"naïve", "café"}},
		{"VAR X = VAR Y.", []string{"VAR", "X", "=", "VAR", "Y", "."}},
		{"a\xffb", []string{"a", "\xff", "b"}},
	}
	for _, c := range cases {
		got := texts(c.in, Tokenize(c.in))
		if strings.Join(got, "|") != strings.Join(c.want, "|") || len(got) != len(c.want) {
			t.Errorf("Tokenize(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestTermIDNormalisation(t *testing.T) {
	same := [][2]string{{"Number", "number"}, {"numbers", "number"}, {"Magic", "MAGIC"}, {"switched", "switch"}, {"cities", "city"}}
	for _, p := range same {
		if TermID(p[0]) != TermID(p[1]) {
			t.Errorf("TermID(%q) != TermID(%q)", p[0], p[1])
		}
	}
	diff := [][2]string{{"is", "i"}, {"process", "proces"}, {"apple", "apply"}, {"123", "124"}}
	for _, p := range diff {
		if TermID(p[0]) == TermID(p[1]) {
			t.Errorf("TermID(%q) == TermID(%q)", p[0], p[1])
		}
	}
}

func TestAppendTokensOffsets(t *testing.T) {
	a, b := "One of the numbers ", "is 42."
	toks := AppendTokens(Tokenize(a), b, uint32(len(a)))
	whole := Tokenize(a + b)
	if len(toks) != len(whole) {
		t.Fatalf("%d tokens piecewise, %d whole", len(toks), len(whole))
	}
	for i := range toks {
		if toks[i] != whole[i] {
			t.Errorf("token %d: %+v piecewise, %+v whole", i, toks[i], whole[i])
		}
	}
}

func FuzzTokenize(f *testing.F) {
	for _, s := range []string{"", "Hello, world!", "shiny-apple 1234567", "naïve\xff\xfe", strings.Repeat("a", 100), "١٢٣ 漢字"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		toks := Tokenize(s)
		if len(toks) > len(s) {
			t.Fatalf("%d tokens from %d bytes", len(toks), len(s))
		}
		prev := uint32(0)
		for _, tk := range toks {
			if tk.Start < prev || tk.End <= tk.Start || int(tk.End) > len(s) {
				t.Fatalf("bad token %+v after offset %d in %q", tk, prev, s)
			}
			if tk.End-tk.Start > 4*maxPieceLetters {
				t.Fatalf("token %+v longer than %d bytes", tk, 4*maxPieceLetters)
			}
			if utf8.ValidString(s[tk.Start:tk.End]) && strings.TrimSpace(s[tk.Start:tk.End]) == "" {
				t.Fatalf("whitespace token %+v in %q", tk, s)
			}
			prev = tk.End
		}
	})
}

func TestF16RoundTrip(t *testing.T) {
	for _, v := range []float32{0, 1, -1, 0.5, 65504, 1e-5, -3.14159, 6e-8} {
		b := f16Bytes([]float32{v})
		got := f16ToF32ForTest(uint16(b[0]) | uint16(b[1])<<8)
		if math.Abs(float64(got-v)) > 1e-3*math.Abs(float64(v))+6e-8 {
			t.Errorf("f16 round trip %v → %v", v, got)
		}
	}
}
