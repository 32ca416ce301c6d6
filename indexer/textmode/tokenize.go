package textmode

import (
	"unicode"
	"unicode/utf8"
)

// Token is one token of a text: its byte span in the original text and its
// term ID. Offsets are kept so evidence strings (exact substrings of a context)
// can be mapped back to token and chunk ranges.
type Token struct {
	Start, End uint32 // byte offsets into the text, End exclusive
	ID         uint32 // term ID: hash of the normalised token text
}

const (
	// maxPieceLetters caps a letter run so that long words split into several
	// word pieces, the way subword tokenizers do; it also bounds token length.
	maxPieceLetters = 10
	// maxPieceDigits splits digit runs into groups of at most three digits, as
	// the LLM tokenizers whose token counts the evaluation mimics do.
	maxPieceDigits = 3
)

// Tokenize splits text into tokens: runs of letters (split into pieces of at
// most maxPieceLetters letters), runs of digits (split into groups of at most
// three) and single punctuation or symbol runes. Whitespace and control
// characters produce no token. The result is deterministic and needs no
// vocabulary file; IDs are stable across machines and releases because they
// are a fixed hash of the normalised (lower-cased, lightly stemmed) text.
// Invalid UTF-8 bytes become single-byte symbol tokens.
func Tokenize(text string) []Token {
	return AppendTokens(nil, text, 0)
}

// AppendTokens tokenizes text like Tokenize, appends the tokens to dst and
// shifts their offsets by base, so a long context can be tokenized piecewise.
func AppendTokens(dst []Token, text string, base uint32) []Token {
	var buf [4 * maxPieceLetters]byte
	i := 0
	for i < len(text) {
		r, size := utf8.DecodeRuneInString(text[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			dst = append(dst, Token{Start: base + uint32(i), End: base + uint32(i+1), ID: hashBytes([]byte{text[i]})})
			i++
		case unicode.IsSpace(r) || unicode.IsControl(r):
			i += size
		case unicode.IsLetter(r) || unicode.IsMark(r):
			start := i
			n := 0
			for i < len(text) && n < maxPieceLetters {
				r2, s2 := utf8.DecodeRuneInString(text[i:])
				if !(unicode.IsLetter(r2) || unicode.IsMark(r2)) || (r2 == utf8.RuneError && s2 <= 1) {
					break
				}
				i += s2
				n++
			}
			norm := lowerInto(buf[:0], text[start:i])
			dst = append(dst, Token{Start: base + uint32(start), End: base + uint32(i), ID: hashBytes(stem(norm))})
		case unicode.IsDigit(r) || unicode.IsNumber(r):
			start := i
			n := 0
			for i < len(text) && n < maxPieceDigits {
				r2, s2 := utf8.DecodeRuneInString(text[i:])
				if !(unicode.IsDigit(r2) || unicode.IsNumber(r2)) {
					break
				}
				i += s2
				n++
			}
			dst = append(dst, Token{Start: base + uint32(start), End: base + uint32(i), ID: hashString(text[start:i])})
		default:
			dst = append(dst, Token{Start: base + uint32(i), End: base + uint32(i+size), ID: hashString(text[i : i+size])})
			i += size
		}
	}
	return dst
}

// TermID returns the ID Tokenize gives to a single word, for callers that
// build term lists by hand (tests, stop lists).
func TermID(word string) uint32 {
	toks := Tokenize(word)
	if len(toks) != 1 {
		return hashString(word)
	}
	return toks[0].ID
}

func lowerInto(dst []byte, s string) []byte {
	for _, r := range s {
		dst = utf8.AppendRune(dst, unicode.ToLower(r))
	}
	return dst
}

// stem strips a few English inflections so that "numbers", "numbered" and
// "number" share a term: paraphrased questions and needles rarely repeat the
// exact inflection. Short words are left alone because stripping them mostly
// merges unrelated words ("is" → "i").
func stem(w []byte) []byte {
	n := len(w)
	switch {
	case n > 5 && string(w[n-3:]) == "ing":
		return w[:n-3]
	case n > 4 && string(w[n-2:]) == "ed":
		return w[:n-2]
	case n > 4 && string(w[n-3:]) == "ies":
		w = append(w[:n-3], 'y')
		return w
	case n > 3 && w[n-1] == 's' && w[n-2] != 's':
		return w[:n-1]
	}
	return w
}

// FNV-1a, 32 bit: tiny, fast, and fixed forever (term IDs are part of the
// model file format).
const (
	fnvOffset = 2166136261
	fnvPrime  = 16777619
)

func hashBytes(b []byte) uint32 {
	h := uint32(fnvOffset)
	for _, c := range b {
		h ^= uint32(c)
		h *= fnvPrime
	}
	return h
}

func hashString(s string) uint32 {
	h := uint32(fnvOffset)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= fnvPrime
	}
	return h
}

// IsSentenceEnd reports whether the token text ends a sentence; training uses
// it to cut unlabelled text into (sentence, surrounding chunk) pairs.
func IsSentenceEnd(text string, t Token) bool {
	if t.End-t.Start != 1 {
		return false
	}
	switch text[t.Start] {
	case '.', '!', '?':
		return true
	}
	return false
}
