package eval

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/flashmemory/flashmemory/indexer/textmode"
)

// Task names of the generated datasets.
const (
	TaskSingleNeedle     = "single_needle"     // RULER niah_single
	TaskMultiKey         = "multi_key"         // RULER niah_multikey: one needle among needles of other keys
	TaskMultiValue       = "multi_value"       // RULER niah_multivalue: several values for one key
	TaskMultiQuery       = "multi_query"       // RULER niah_multiquery: several keys asked at once
	TaskDistractorDense  = "distractor_dense"  // dozens of near-identical needles (keys share a word)
	TaskVariableTracking = "variable_tracking" // RULER vt: chains of VAR assignments
	TaskParaphrased      = "paraphrased"       // needle worded differently from the question
	TaskKnowledgeUpdate  = "knowledge_update"  // LongMemEval: multi-session dialogue, facts updated later
	// Multi-hop tasks: the question names only the first link of its evidence;
	// every later link shares words only with the link before it.
	TaskChainHops      = "chain_hops"      // 2–4 assignments in prose, each reading the previous one
	TaskEntityBridge   = "entity_bridge"   // person → organisation → place, two or three facts apart
	TaskDialogueUpdate = "dialogue_update" // dialogue: who "my sister" is, then her latest update by name
)

// SingleHopTasks are the tasks of the 2026-11-27 evaluation (RULER and
// LongMemEval styles).
var SingleHopTasks = []string{TaskSingleNeedle, TaskMultiKey, TaskMultiValue, TaskMultiQuery,
	TaskDistractorDense, TaskVariableTracking, TaskParaphrased, TaskKnowledgeUpdate}

// MultiHopTasks need evidence the question does not name.
var MultiHopTasks = []string{TaskChainHops, TaskEntityBridge, TaskDialogueUpdate}

// AllTasks lists every generator, in the order reports use. A task's records
// depend only on the seed, the task's index here and the filler, so adding
// tasks at the end leaves earlier tasks' bytes unchanged.
var AllTasks = append(slices.Clone(SingleHopTasks), MultiHopTasks...)

// Template styles of Generate.
const (
	// StyleDefault is the wording of the project's own evaluation sets.
	StyleDefault = "default"
	// StyleHeldout words every task differently (other templates, keys, values,
	// attributes and relations), for the held-out split that decides model
	// selection: no template of it is in the default style or in the training
	// pairs of indexer/textmode.
	StyleHeldout = "heldout"
)

// GenOptions configures Generate.
type GenOptions struct {
	// Seed makes the dataset reproducible: same filler, options and seed give
	// the same bytes.
	Seed uint64
	// Tokens is the target context length in tokens (of the text-mode
	// tokenizer), 1K … 2M; contexts come out within a few hundred tokens of it.
	Tokens int
	// Tasks to generate (default AllTasks).
	Tasks []string
	// Records per task (default 1) and questions per record (default 4).
	Records, Queries int
	// FillerDir holds the .txt files the haystack is made of (default
	// ../shared/haystack/paul-graham-essays relative to the working directory).
	FillerDir string
	// Style picks the templates: StyleDefault ("" too) or StyleHeldout.
	Style string
}

// DefaultFillerDir is where the shared haystack sits relative to the repository
// root.
const DefaultFillerDir = "../shared/haystack/paul-graham-essays"

func (o *GenOptions) fill() error {
	if o.Tokens < 1024 || o.Tokens > 2<<20 {
		return fmt.Errorf("%w: Tokens %d not in [1024, 2097152]", ErrBadOptions, o.Tokens)
	}
	if len(o.Tasks) == 0 {
		o.Tasks = AllTasks
	}
	for _, t := range o.Tasks {
		if !slices.Contains(AllTasks, t) {
			return fmt.Errorf("%w: unknown task %q (known: %s)", ErrBadOptions, t, strings.Join(AllTasks, ", "))
		}
	}
	if o.Records <= 0 {
		o.Records = 1
	}
	if o.Queries <= 0 {
		o.Queries = 4
	}
	if o.Queries > 64 {
		return fmt.Errorf("%w: Queries %d > 64", ErrBadOptions, o.Queries)
	}
	if o.FillerDir == "" {
		o.FillerDir = DefaultFillerDir
	}
	switch o.Style {
	case "":
		o.Style = StyleDefault
	case StyleDefault, StyleHeldout:
	default:
		return fmt.Errorf("%w: unknown style %q (known: %s, %s)", ErrBadOptions, o.Style, StyleDefault, StyleHeldout)
	}
	return nil
}

// Filler is haystack text cut into sentences with their token counts.
type Filler struct {
	sents  []string
	tokens []int
}

// LoadFiller reads every .txt file of dir (sorted by name) and splits it into
// sentences.
func LoadFiller(dir string) (*Filler, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.txt"))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNoFiller, dir, err)
	}
	sort.Strings(names)
	f := &Filler{}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNoFiller, err)
		}
		f.addText(string(b))
	}
	if len(f.sents) < 16 {
		return nil, fmt.Errorf("%w: %s has %d sentences in .txt files, need 16", ErrNoFiller, dir, len(f.sents))
	}
	return f, nil
}

// NewFiller makes a Filler from texts held in memory.
func NewFiller(texts ...string) (*Filler, error) {
	f := &Filler{}
	for _, t := range texts {
		f.addText(t)
	}
	if len(f.sents) < 16 {
		return nil, fmt.Errorf("%w: %d sentences, need 16", ErrNoFiller, len(f.sents))
	}
	return f, nil
}

func (f *Filler) addText(text string) {
	toks := textmode.Tokenize(text)
	lo, tlo := 0, 0
	for j, t := range toks {
		if textmode.IsSentenceEnd(text, t) && j+1-tlo >= 3 {
			s := strings.Join(strings.Fields(text[lo:t.End]), " ")
			f.sents = append(f.sents, s)
			f.tokens = append(f.tokens, j+1-tlo)
			lo, tlo = int(t.End), j+1
		}
	}
}

// haystack returns n filler sentences (cycling through the filler in a seeded
// order, reshuffled each pass) totalling at least tokens tokens.
func (f *Filler) haystack(rng *rand.Rand, tokens int) []string {
	var out []string
	total := 0
	order := make([]int, len(f.sents))
	// Shuffle whole runs of 40 sentences, not single sentences, so the filler
	// keeps the topical coherence of real text.
	const run = 40
	for total < tokens {
		runs := (len(f.sents) + run - 1) / run
		perm := rng.Perm(runs)
		order = order[:0]
		for _, r := range perm {
			for i := r * run; i < min((r+1)*run, len(f.sents)); i++ {
				order = append(order, i)
			}
		}
		for _, i := range order {
			if total >= tokens {
				break
			}
			out = append(out, f.sents[i])
			total += f.tokens[i]
		}
	}
	return out
}

// needle is a sentence to insert, and whether it is evidence of query q
// (q < 0: a distractor).
type needle struct {
	text  string
	query int
	// depth in [0, 1) orders needles that must keep their relative order
	// (variable chains, knowledge updates); < 0 means anywhere.
	depth float64
}

// Generate writes opts.Records records of every task in opts.Tasks to w.
func Generate(w io.Writer, opts GenOptions) error {
	if err := opts.fill(); err != nil {
		return err
	}
	f, err := LoadFiller(opts.FillerDir)
	if err != nil {
		return err
	}
	return GenerateFrom(w, f, opts)
}

// GenerateFrom is Generate with the filler already loaded.
func GenerateFrom(w io.Writer, f *Filler, opts GenOptions) error {
	if err := opts.fill(); err != nil {
		return err
	}
	jw := NewWriter(w)
	for ti, task := range opts.Tasks {
		for r := range opts.Records {
			rng := rand.New(rand.NewPCG(opts.Seed, uint64(ti)<<32|uint64(r)))
			rec, err := genRecord(rng, f, task, opts)
			if err != nil {
				return err
			}
			rec.ID = fmt.Sprintf("%s-%dk-s%d-%d", task, opts.Tokens/1024, opts.Seed, r)
			if opts.Style != StyleDefault {
				rec.ID = opts.Style + "-" + rec.ID
			}
			if err := jw.Write(rec); err != nil {
				return err
			}
		}
	}
	return jw.Flush()
}

func genRecord(rng *rand.Rand, f *Filler, task string, opts GenOptions) (*Record, error) {
	g := &keyGen{rng: rng, used: map[string]bool{}, style: opts.Style}
	var needles []needle
	var queries []Query
	dialogue := task == TaskKnowledgeUpdate || task == TaskDialogueUpdate
	for q := range opts.Queries {
		ns, qu, err := g.task(task, q)
		if err != nil {
			return nil, err
		}
		needles = append(needles, ns...)
		queries = append(queries, qu)
	}
	needleTokens := 0
	for _, n := range needles {
		needleTokens += len(textmode.Tokenize(n.text))
	}
	hay := f.haystack(rng, max(opts.Tokens-needleTokens, 0))
	if dialogue {
		// Speaker tags and session headers add tokens: drop turns from the end
		// until the context is back at its target length.
		hay = asDialogue(hay)
		total := needleTokens
		for i, s := range hay {
			total += len(textmode.Tokenize(s))
			if total >= opts.Tokens {
				hay = hay[:i+1]
				break
			}
		}
	}
	// Place needles at random sentence boundaries in [2 %, 98 %] of the
	// haystack; ordered needles (depth ≥ 0) keep their order.
	type placed struct {
		at int
		n  needle
	}
	var ps []placed
	lo, hi := len(hay)/50, len(hay)-len(hay)/50
	for _, n := range needles {
		var at int
		if n.depth >= 0 {
			at = lo + int(n.depth*float64(hi-lo))
		} else {
			at = lo + rng.IntN(max(hi-lo, 1))
		}
		ps = append(ps, placed{at, n})
	}
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].at < ps[j].at })
	var sb strings.Builder
	pi := 0
	for i, s := range hay {
		for pi < len(ps) && ps[pi].at == i {
			sb.WriteString(ps[pi].n.text)
			sb.WriteByte(' ')
			pi++
		}
		sb.WriteString(s)
		if dialogue {
			sb.WriteByte('\n')
		} else {
			sb.WriteByte(' ')
		}
	}
	for ; pi < len(ps); pi++ {
		sb.WriteString(ps[pi].n.text)
		sb.WriteByte(' ')
	}
	ctx := sb.String()
	for i := range queries {
		for _, e := range queries[i].Evidence {
			if c := strings.Count(ctx, e); c != 1 {
				return nil, fmt.Errorf("%w: task %s: evidence %.40q occurs %d times", ErrBadOptions, task, e, c)
			}
		}
	}
	return &Record{Task: task, Context: ctx, Queries: queries}, nil
}

// asDialogue turns filler sentences into LongMemEval-style chat sessions:
// dated session headers and alternating user / assistant turns.
func asDialogue(hay []string) []string {
	out := make([]string, 0, len(hay)+len(hay)/8)
	session := 0
	for i, s := range hay {
		if i%40 == 0 {
			session++
			out = append(out, fmt.Sprintf("[Session %d, 2024-%02d-%02d]", session, 1+(session/28)%12, 1+session%28))
		}
		who := "User:"
		if i%2 == 1 {
			who = "Assistant:"
		}
		out = append(out, who+" "+s)
	}
	return out
}

type keyGen struct {
	rng   *rand.Rand
	used  map[string]bool
	style string
}

var adjectives = strings.Fields(`amber brisk cobalt dusty elated frosty gilded hollow ivory jagged kindly lunar
	mellow nimble opal placid quaint rustic silken tawny umber velvet wistful yonder zesty azure brazen
	crimson dapper feral gaunt hazel inky jovial knotty lavish misty noble ornate plucky quartz rosy
	sable tidal unruly vivid wary`)

var nouns = strings.Fields(`anchor badger canyon dagger ember falcon glacier harbor iguana juniper kettle
	lantern meadow nectar orchid pebble quiver raven saddle thistle urchin violin walrus yarrow zephyr
	beacon cobbler dolphin easel fjord goblet heron igloo jackal kayak lagoon marmot nutmeg oyster
	parsnip quokka reef sparrow tundra`)

var cities = strings.Fields(`Lisbon Denver Osaka Tallinn Bergen Cusco Nairobi Hobart Quebec Valparaiso
	Ljubljana Tbilisi Asheville Gdansk Porto Kyoto Reykjavik Halifax Bruges Cordoba`)

// key returns a fresh needle key: an adjective-noun pair or a short code.
func (g *keyGen) key() string {
	for {
		var k string
		if g.rng.IntN(2) == 0 {
			k = adjectives[g.rng.IntN(len(adjectives))] + "-" + nouns[g.rng.IntN(len(nouns))]
		} else {
			k = fmt.Sprintf("%s-%c%c%d", nouns[g.rng.IntN(len(nouns))], 'A'+rune(g.rng.IntN(26)), 'A'+rune(g.rng.IntN(26)), 10+g.rng.IntN(90))
		}
		if !g.used[k] {
			g.used[k] = true
			return k
		}
	}
}

func (g *keyGen) value() string {
	for {
		v := strconv.Itoa(1_000_000 + g.rng.IntN(9_000_000))
		if !g.used[v] {
			g.used[v] = true
			return v
		}
	}
}

func magic(key, value string) string {
	return "One of the special magic numbers for " + key + " is: " + value + "."
}

func magicQuestion(keys ...string) string {
	if len(keys) == 1 {
		return "What is the special magic number for " + keys[0] + " mentioned in the provided text?"
	}
	return "What are the special magic numbers for " + strings.Join(keys[:len(keys)-1], ", ") + " and " + keys[len(keys)-1] + " mentioned in the provided text?"
}

var paraphrases = []string{
	"Remember that the secret code associated with %s happens to be %s.",
	"Note for later: %s has been assigned the hidden figure %s.",
	"The confidential digits linked to %s are %s, as the archive notes.",
	"Somebody wrote down that %s corresponds to the lucky value %s.",
}

var attributes = []struct{ attr, q string }{
	{"favorite restaurant", "What is my favorite restaurant now?"},
	{"gym", "Which gym do I go to now?"},
	{"dentist", "Who is my dentist now?"},
	{"phone carrier", "Which phone carrier do I use now?"},
	{"yoga teacher", "Who is my yoga teacher now?"},
	{"bank", "Which bank am I with now?"},
	{"book club", "Which book club am I in now?"},
	{"landlord", "Who is my landlord now?"},
}

// task returns the needles and the question of query q of one record.
func (g *keyGen) task(task string, q int) ([]needle, Query, error) {
	if slices.Contains(MultiHopTasks, task) {
		return g.multiHop(task, q)
	}
	if g.style == StyleHeldout {
		return g.heldout(task, q)
	}
	switch task {
	case TaskSingleNeedle:
		k, v := g.key(), g.value()
		n := magic(k, v)
		return []needle{{n, q, -1}}, Query{magicQuestion(k), v, []string{n}}, nil
	case TaskMultiKey:
		k, v := g.key(), g.value()
		n := magic(k, v)
		ns := []needle{{n, q, -1}}
		for range 3 {
			ns = append(ns, needle{magic(g.key(), g.value()), -1, -1})
		}
		return ns, Query{magicQuestion(k), v, []string{n}}, nil
	case TaskMultiValue:
		k := g.key()
		var ns []needle
		var vs, ev []string
		for range 4 {
			v := g.value()
			n := magic(k, v)
			ns = append(ns, needle{n, q, -1})
			vs = append(vs, v)
			ev = append(ev, n)
		}
		return ns, Query{"What are all the special magic numbers for " + k + " mentioned in the provided text?", strings.Join(vs, ", "), ev}, nil
	case TaskMultiQuery:
		var ns []needle
		var ks, vs, ev []string
		for range 2 {
			k, v := g.key(), g.value()
			n := magic(k, v)
			ns = append(ns, needle{n, q, -1})
			ks, vs, ev = append(ks, k), append(vs, v), append(ev, n)
		}
		return ns, Query{magicQuestion(ks...), strings.Join(vs, ", "), ev}, nil
	case TaskDistractorDense:
		// Twelve needles whose keys share the target's adjective, so every one
		// matches half of the key and the whole template.
		adj := adjectives[g.rng.IntN(len(adjectives))]
		var ns []needle
		var target needle
		var tk, tv string
		for i := range 12 {
			var k string
			for {
				k = adj + "-" + nouns[g.rng.IntN(len(nouns))]
				if !g.used[k] {
					g.used[k] = true
					break
				}
			}
			v := g.value()
			n := needle{magic(k, v), -1, -1}
			if i == 0 {
				n.query, target, tk, tv = q, n, k, v
			}
			ns = append(ns, n)
		}
		return ns, Query{magicQuestion(tk), tv, []string{target.text}}, nil
	case TaskVariableTracking:
		v := g.value()
		names := make([]string, 4)
		for i := range names {
			for {
				names[i] = string([]rune{'A' + rune(g.rng.IntN(26)), 'A' + rune(g.rng.IntN(26)), 'A' + rune(g.rng.IntN(26)), 'A' + rune(g.rng.IntN(26)), 'A' + rune(g.rng.IntN(26))})
				if !g.used[names[i]] {
					g.used[names[i]] = true
					break
				}
			}
		}
		var ns []needle
		var ev []string
		base := g.rng.Float64() * 0.5
		for i, nm := range names {
			var s string
			if i == 0 {
				s = "VAR " + nm + " = " + v + "."
			} else {
				s = "VAR " + nm + " = VAR " + names[i-1] + "."
			}
			ns = append(ns, needle{s, q, base + float64(i)*0.12})
			ev = append(ev, s)
		}
		return ns, Query{"Which VAR names hold the value " + v + ", assigned directly or through another VAR?", strings.Join(names, " "), ev}, nil
	case TaskParaphrased:
		k, v := g.key(), g.value()
		n := fmt.Sprintf(paraphrases[g.rng.IntN(len(paraphrases))], k, v)
		return []needle{{n, q, -1}}, Query{magicQuestion(k), v, []string{n}}, nil
	case TaskKnowledgeUpdate:
		a := attributes[q%len(attributes)]
		old := g.place()
		cur := g.place()
		first := "User: By the way, my " + a.attr + " is " + old + "."
		upd := "User: Quick update about my " + a.attr + ": I switched, it is " + cur + " now."
		d := g.rng.Float64() * 0.4
		return []needle{{first, -1, d}, {upd, q, d + 0.3 + g.rng.Float64()*0.25}}, Query{a.q, cur, []string{upd}}, nil
	}
	return nil, Query{}, fmt.Errorf("%w: unknown task %q", ErrBadOptions, task)
}

// place returns a fresh proper name for knowledge-update values.
func (g *keyGen) place() string {
	for {
		p := strings.ToUpper(nouns[g.rng.IntN(len(nouns))][:1]) + nouns[g.rng.IntN(len(nouns))][1:] + " of " + cities[g.rng.IntN(len(cities))]
		if !g.used[p] {
			g.used[p] = true
			return p
		}
	}
}
