package eval

import (
	"fmt"
	"sort"
	"strings"

	"github.com/flashmemory/flashmemory/indexer/textmode"
)

// Geometry of the evaluation: DeepSeek-V4 compresses 4 tokens into one chunk
// and FlashMemory recalls 64-chunk pages.
const (
	TokensPerChunk = textmode.TokensPerChunk
	ChunksPerPage  = 64
	TokensPerPage  = TokensPerChunk * ChunksPerPage
)

// Doc is a tokenized context.
type Doc struct {
	Text   string
	Tokens []textmode.Token
}

// NewDoc tokenizes text with the text-mode tokenizer (the one the model's term
// IDs come from).
func NewDoc(text string) *Doc { return &Doc{Text: text, Tokens: textmode.Tokenize(text)} }

// Chunks is the number of chunks (a partial last chunk counts).
func (d *Doc) Chunks() int { return textmode.NumChunks(len(d.Tokens)) }

// Pages is the number of pages (a partial last page counts).
func (d *Doc) Pages() int { return (d.Chunks() + ChunksPerPage - 1) / ChunksPerPage }

// ChunkSpan is an inclusive range of chunk indices.
type ChunkSpan struct{ First, Last int }

// TokenRange returns the tokens [lo, hi) that overlap the byte range
// [start, end) of the text; lo == hi when none does (the range is whitespace).
func (d *Doc) TokenRange(start, end int) (lo, hi int) {
	lo = sort.Search(len(d.Tokens), func(i int) bool { return int(d.Tokens[i].End) > start })
	hi = sort.Search(len(d.Tokens), func(i int) bool { return int(d.Tokens[i].Start) >= end })
	return lo, max(lo, hi)
}

// SpanChunks maps a byte range of the text to the chunks holding its tokens.
func (d *Doc) SpanChunks(start, end int) (ChunkSpan, error) {
	if start < 0 || end > len(d.Text) || start >= end {
		return ChunkSpan{}, fmt.Errorf("%w: byte range [%d, %d) outside text of %d bytes", ErrBadOptions, start, end, len(d.Text))
	}
	lo, hi := d.TokenRange(start, end)
	if lo == hi {
		return ChunkSpan{}, fmt.Errorf("%w: byte range [%d, %d) holds no token", ErrBadOptions, start, end)
	}
	return ChunkSpan{First: lo / TokensPerChunk, Last: (hi - 1) / TokensPerChunk}, nil
}

// EvidenceChunks maps an evidence string (its first occurrence in the text) to
// its chunk range.
func (d *Doc) EvidenceChunks(evidence string) (ChunkSpan, error) {
	i := strings.Index(d.Text, evidence)
	if i < 0 {
		return ChunkSpan{}, fmt.Errorf("%.40q: %w", evidence, ErrEvidenceNotFound)
	}
	return d.SpanChunks(i, i+len(evidence))
}
