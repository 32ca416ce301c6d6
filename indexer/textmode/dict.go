package textmode

import (
	"encoding/binary"
	"slices"
	"strings"
)

// A dictionary learned from definitional text ("barber: a hairdresser who
// cuts hair and shaves beards as a trade.", WordNet's glosses among the
// training corpora): which words name what other words describe. The Learned
// mode uses it where some of a question's words are absent from the whole
// context — "Who cuts my hair these days?" against "… Delphine Keel is my
// barber from now on." — so the evidence must say it in other words: a gloss
// holding at least two of the question's words, one of them absent, lends
// its headwords to the query. Where every word of the question is in the
// context it does nothing.
type dict struct {
	termOff []uint32 // Buckets+1 offsets into glosses
	glosses []uint32 // gloss ids per term bucket, ascending
	headOff []uint32 // gloss count+1 offsets into heads
	heads   []uint16 // headword buckets per gloss
}

// Dictionary limits: a term in more glosses than dictMaxGlosses is too
// general to point anywhere ("a", "which"); a head part of more than
// dictMaxHeadWords words per name is not a headword list.
const (
	dictMaxGlosses   = 2000
	dictMaxHeadWords = 3
	// dictSupport is how many query words a gloss must hold.
	dictSupport = 2
	// dictMaxHeads bounds the headwords one query borrows; dictMaxBest the
	// glosses they come from.
	dictMaxHeads = 16
	dictMaxBest  = 4
)

// buildDict parses every line "name, name: gloss" of docs into the model's
// dictionary: the last word of each name (of at most dictMaxHeadWords
// words) is a headword; the gloss up to its first ';' gives the terms.
func buildDict(m *Model, docs []Document) {
	nb := m.cfg.Buckets
	type gl struct {
		terms []uint16
		heads []uint16
	}
	var gs []gl
	for _, d := range docs {
		for line := range strings.Lines(d.Text) {
			head, gloss, ok := strings.Cut(line, ": ")
			if !ok || len(head) > 80 {
				continue
			}
			if i := strings.IndexByte(gloss, ';'); i >= 0 {
				gloss = gloss[:i]
			}
			var g gl
			for name := range strings.SplitSeq(head, ",") {
				toks := Tokenize(name)
				if len(toks) == 0 || len(toks) > dictMaxHeadWords {
					g.heads = nil
					break
				}
				if b := uint16(m.bucket(toks[len(toks)-1].ID)); m.idf[b] >= m.cfg.MinIDF && !slices.Contains(g.heads, b) {
					g.heads = append(g.heads, b)
				}
			}
			if len(g.heads) == 0 {
				continue
			}
			for _, t := range Tokenize(gloss) {
				if b := uint16(m.bucket(t.ID)); m.idf[b] >= m.cfg.MinIDF && !slices.Contains(g.terms, b) && !slices.Contains(g.heads, b) {
					g.terms = append(g.terms, b)
				}
			}
			if len(g.terms) >= dictSupport {
				gs = append(gs, g)
			}
		}
	}
	cnt := make([]uint32, nb+1)
	for _, g := range gs {
		for _, t := range g.terms {
			cnt[t]++
		}
	}
	d := &dict{termOff: make([]uint32, nb+1)}
	for b := range nb {
		n := cnt[b]
		if n > dictMaxGlosses {
			n = 0
		}
		d.termOff[b+1] = d.termOff[b] + n
	}
	d.glosses = make([]uint32, d.termOff[nb])
	fill := slices.Clone(d.termOff[:nb])
	d.headOff = make([]uint32, 1, len(gs)+1)
	for i, g := range gs {
		for _, t := range g.terms {
			if cnt[t] <= dictMaxGlosses {
				d.glosses[fill[t]] = uint32(i)
				fill[t]++
			}
		}
		d.heads = append(d.heads, g.heads...)
		d.headOff = append(d.headOff, uint32(len(d.heads)))
	}
	m.dict = d
}

// borrow returns the headwords of the glosses holding the most (at least
// dictSupport) of the query's terms, one of them at least absent from the
// context — nothing if more than dictMaxBest glosses tie — at most
// dictMaxHeads, in gloss order, none of them a query term.
func (d *dict) borrow(q *Query, absent []uint16) []uint16 {
	if d == nil || len(absent) == 0 {
		return nil
	}
	type tally struct{ all, absent int }
	hits := map[uint32]tally{}
	for _, t := range q.terms {
		isAbsent := slices.Contains(absent, t)
		for _, g := range d.glosses[d.termOff[t]:d.termOff[int(t)+1]] {
			h := hits[g]
			h.all++
			if isAbsent {
				h.absent++
			}
			hits[g] = h
		}
	}
	// Only the glosses that hold the most of the question's words, and at
	// most dictMaxGlosses of them: a question whose words many glosses
	// share ("which names hold the value …") is not defining anything.
	var ids []uint32
	bestN := dictSupport
	for g, n := range hits {
		if n.absent == 0 || n.all < bestN {
			continue
		}
		if n.all > bestN {
			bestN, ids = n.all, ids[:0]
		}
		ids = append(ids, g)
	}
	if len(ids) > dictMaxBest {
		return nil
	}
	slices.Sort(ids)
	var out []uint16
	for _, g := range ids {
		for _, h := range d.heads[d.headOff[g]:d.headOff[g+1]] {
			if q.set[h>>6]&(1<<(h&63)) == 0 && !slices.Contains(out, h) && len(out) < dictMaxHeads {
				out = append(out, h)
			}
		}
	}
	return out
}

// u32Bytes and u16Bytes encode the dictionary's tensors (little-endian).
func u32Bytes(v []uint32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], x)
	}
	return b
}

func u16Bytes(v []uint16) []byte {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
	return b
}

// parseDict checks and decodes the dictionary tensors' bytes.
func parseDict(buckets int, termOff, glosses, headOff, heads []byte) (*dict, bool) {
	if len(termOff) != 4*(buckets+1) || len(glosses)%4 != 0 || len(headOff)%4 != 0 || len(headOff) < 4 || len(heads)%2 != 0 {
		return nil, false
	}
	d := &dict{
		termOff: make([]uint32, buckets+1), glosses: make([]uint32, len(glosses)/4),
		headOff: make([]uint32, len(headOff)/4), heads: make([]uint16, len(heads)/2),
	}
	for i := range d.termOff {
		d.termOff[i] = binary.LittleEndian.Uint32(termOff[4*i:])
	}
	for i := range d.glosses {
		d.glosses[i] = binary.LittleEndian.Uint32(glosses[4*i:])
	}
	for i := range d.headOff {
		d.headOff[i] = binary.LittleEndian.Uint32(headOff[4*i:])
	}
	for i := range d.heads {
		d.heads[i] = binary.LittleEndian.Uint16(heads[2*i:])
	}
	ng := len(d.headOff) - 1
	if d.termOff[0] != 0 || int(d.termOff[buckets]) != len(d.glosses) || d.headOff[0] != 0 || int(d.headOff[ng]) != len(d.heads) {
		return nil, false
	}
	for i := 1; i < len(d.termOff); i++ {
		if d.termOff[i] < d.termOff[i-1] {
			return nil, false
		}
	}
	for i := 1; i < len(d.headOff); i++ {
		if d.headOff[i] < d.headOff[i-1] {
			return nil, false
		}
	}
	for _, g := range d.glosses {
		if int(g) >= ng {
			return nil, false
		}
	}
	for _, h := range d.heads {
		if int(h) >= buckets {
			return nil, false
		}
	}
	return d, true
}
