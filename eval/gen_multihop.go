package eval

import (
	"fmt"
	"strconv"
	"strings"
)

// Word lists of the held-out style and of the multi-hop tasks: none of them
// is in the default style's lists, so held-out keys share no word with the
// project's own sets.
var (
	hoFirst = strings.Fields(`birch copper delta fennel garnet hemlock indigo jasper kelp larch
		maple nickel oak pewter quince russet slate teak umbra vermilion willow xenon yew zinc
		alder basalt cedar dune flint granite`)
	hoSecond = strings.Fields(`ledger beacon relay vault signal archive compass lattice mosaic
		furnace orbit prism quarry rampart spindle turret utensil vortex wicket yardarm bastion
		citadel depot foundry gantry hangar`)
	hoPeople = strings.Fields(`Orla Brannock Tamsin Ilse Joaquin Petra Oskar Niamh Anselm Ysolde
		Casimir Delphine Emrys Fenella Gideon Halvard Ingrid Jovan Katell Leopold Mireille Nestor
		Ottilie Perrin Quillon Rosalind Severin Thaddeus Ulla Valentin`)
	hoSurnames = strings.Fields(`Venn Harrow Quist Mallory Thorne Ashdown Keel Pellow Strand
		Wexley Corrin Dunmore Fairlie Gorse Hollis Ivers Jessop Kember Lathom Morrow`)
	hoOrgs = strings.Fields(`Castell Brightwater Meridian Halcyon Northgate Ironbark Silverline
		Redfern Bluestone Kingsmere Larkspur Oakhurst Windrow Ashgrove Copperfield`)
	hoOrgKinds = strings.Fields(`Analytics Robotics Shipping Pharmaceuticals Textiles Optics
		Insurance Foods Aerospace Ceramics`)
	hoPlaces = strings.Fields(`Tbilisi Trondheim Cartagena Hobart Ljubljana Arequipa Windhoek
		Tromso Valletta Bergamo Oaxaca Kaunas Galway Dunedin Sapporo Esbjerg Tartu Zadar Fes Ushuaia`)
	// Syllables of made-up variable names for chain_hops: names no corpus holds.
	syllables = strings.Fields(`ka lo mi ne ru ta vo xi ze qua bri dor fen gul hix jor kav
		lum mer nox pil rav sef tor ulm vex wiz yor zan`)
)

func (g *keyGen) pick(ws []string) string { return ws[g.rng.IntN(len(ws))] }

// fresh returns make() until it gives a string not used yet in the record.
func (g *keyGen) fresh(make func() string) string {
	for {
		s := make()
		if !g.used[s] {
			g.used[s] = true
			return s
		}
	}
}

// hoKey is a held-out needle key: "Project Birch Ledger" or a code "QX-4471".
func (g *keyGen) hoKey() string {
	return g.fresh(func() string {
		if g.rng.IntN(2) == 0 {
			return "Project " + capital(g.pick(hoFirst)) + " " + capital(g.pick(hoSecond))
		}
		return fmt.Sprintf("unit %c%c-%d", 'A'+rune(g.rng.IntN(26)), 'A'+rune(g.rng.IntN(26)), 1000+g.rng.IntN(9000))
	})
}

// hoValue is a six-digit held-out value.
func (g *keyGen) hoValue() string {
	return g.fresh(func() string { return strconv.Itoa(100_000 + g.rng.IntN(900_000)) })
}

func capital(s string) string { return strings.ToUpper(s[:1]) + s[1:] }

func hoFact(key, value string) string {
	return "Registry entry: the access code issued to " + key + " reads " + value + "."
}

func hoQuestion(keys ...string) string {
	if len(keys) == 1 {
		return "Which access code was issued to " + keys[0] + "?"
	}
	return "Which access codes were issued to " + strings.Join(keys[:len(keys)-1], ", ") + " and " + keys[len(keys)-1] + "?"
}

var hoParaphrases = []string{
	"Whoever asks about %s should be told %s, and nothing else.",
	"The lockbox labelled %s opens with the combination %s.",
	"According to the logbook, %s was given the number %s.",
	"If you need to reach %s, dial extension %s.",
}

var hoAttributes = []struct{ attr, q string }{
	{"piano teacher", "Who teaches me piano at the moment?"},
	{"internet provider", "Which internet provider am I on at the moment?"},
	{"barber", "Who cuts my hair these days?"},
	{"running club", "Which running club do I run with at the moment?"},
	{"accountant", "Who does my accounts at the moment?"},
	{"vet", "Which vet takes care of my dog at the moment?"},
	{"car", "What car do I drive at the moment?"},
	{"coffee place", "Where do I get my coffee these days?"},
}

// hoName is a fresh proper name "Ingrid Venn".
func (g *keyGen) hoName() string {
	return g.fresh(func() string { return g.pick(hoPeople) + " " + g.pick(hoSurnames) })
}

// heldout returns the needles and question of query q for the single-hop
// tasks in the held-out style.
func (g *keyGen) heldout(task string, q int) ([]needle, Query, error) {
	switch task {
	case TaskSingleNeedle:
		k, v := g.hoKey(), g.hoValue()
		n := hoFact(k, v)
		return []needle{{n, q, -1}}, Query{hoQuestion(k), v, []string{n}}, nil
	case TaskMultiKey:
		k, v := g.hoKey(), g.hoValue()
		n := hoFact(k, v)
		ns := []needle{{n, q, -1}}
		for range 3 {
			ns = append(ns, needle{hoFact(g.hoKey(), g.hoValue()), -1, -1})
		}
		return ns, Query{hoQuestion(k), v, []string{n}}, nil
	case TaskMultiValue:
		k := g.hoKey()
		var ns []needle
		var vs, ev []string
		for range 4 {
			v := g.hoValue()
			n := hoFact(k, v)
			ns = append(ns, needle{n, q, -1})
			vs, ev = append(vs, v), append(ev, n)
		}
		return ns, Query{"List every access code issued to " + k + ".", strings.Join(vs, ", "), ev}, nil
	case TaskMultiQuery:
		var ns []needle
		var ks, vs, ev []string
		for range 2 {
			k, v := g.hoKey(), g.hoValue()
			n := hoFact(k, v)
			ns = append(ns, needle{n, q, -1})
			ks, vs, ev = append(ks, k), append(vs, v), append(ev, n)
		}
		return ns, Query{hoQuestion(ks...), strings.Join(vs, ", "), ev}, nil
	case TaskDistractorDense:
		first := capital(g.pick(hoFirst))
		var ns []needle
		var ev, tk, tv string
		for i := range 12 {
			k := g.fresh(func() string { return "Project " + first + " " + capital(g.pick(hoSecond)) })
			v := g.hoValue()
			n := needle{hoFact(k, v), -1, -1}
			if i == 0 {
				n.query, ev, tk, tv = q, n.text, k, v
			}
			ns = append(ns, n)
		}
		return ns, Query{hoQuestion(tk), tv, []string{ev}}, nil
	case TaskVariableTracking:
		v := g.hoValue()
		names := make([]string, 4)
		for i := range names {
			names[i] = g.fresh(func() string {
				return fmt.Sprintf("R%c%c%d", 'A'+rune(g.rng.IntN(26)), 'A'+rune(g.rng.IntN(26)), 10+g.rng.IntN(90))
			})
		}
		var ns []needle
		var ev []string
		base := g.rng.Float64() * 0.5
		for i, nm := range names {
			s := "Register " + nm + " holds " + v + "."
			if i > 0 {
				s = "Register " + nm + " copies register " + names[i-1] + "."
			}
			ns = append(ns, needle{s, q, base + float64(i)*0.12})
			ev = append(ev, s)
		}
		return ns, Query{"Which registers end up holding " + v + "?", strings.Join(names, " "), ev}, nil
	case TaskParaphrased:
		k, v := g.hoKey(), g.hoValue()
		n := fmt.Sprintf(hoParaphrases[g.rng.IntN(len(hoParaphrases))], k, v)
		return []needle{{n, q, -1}}, Query{hoQuestion(k), v, []string{n}}, nil
	case TaskKnowledgeUpdate:
		a := hoAttributes[q%len(hoAttributes)]
		old, cur := g.hoName(), g.hoName()
		first := "User: I have been going to " + old + " as my " + a.attr + " for years."
		upd := "User: Heads up, " + cur + " is my " + a.attr + " from now on."
		d := g.rng.Float64() * 0.4
		return []needle{{first, -1, d}, {upd, q, d + 0.3 + g.rng.Float64()*0.25}}, Query{a.q, cur, []string{upd}}, nil
	}
	return nil, Query{}, fmt.Errorf("%w: unknown task %q", ErrBadOptions, task)
}

// varName is a made-up lower-case name of two or three syllables.
func (g *keyGen) varName() string {
	return g.fresh(func() string {
		n := 2 + g.rng.IntN(2)
		var b strings.Builder
		for range n {
			b.WriteString(g.pick(syllables))
		}
		return b.String()
	})
}

// container is a held-out chain name: a container word and a number, words a
// training corpus may well hold, so following the chain cannot rely on
// novelty.
func (g *keyGen) container() string {
	kinds := []string{"Crate", "Locker", "Bin", "Drawer", "Cabinet", "Tray", "Shelf", "Basket"}
	return g.fresh(func() string { return fmt.Sprintf("%s %d", g.pick(kinds), 10+g.rng.IntN(90)) })
}

var relatives = []string{"sister", "brother", "cousin", "neighbour", "coworker", "mentor", "aunt", "flatmate"}

// multiHop returns the needles and question of query q of a multi-hop task.
// Links keep their order (depth), spread over the context, so a later link is
// often far from the first.
func (g *keyGen) multiHop(task string, q int) ([]needle, Query, error) {
	ho := g.style == StyleHeldout
	switch task {
	case TaskChainHops:
		links := 2 + g.rng.IntN(3)
		var v string
		names := make([]string, links)
		if ho {
			v = g.hoValue()
			for i := range names {
				names[i] = g.container()
			}
		} else {
			v = g.value()
			for i := range names {
				names[i] = g.varName()
			}
		}
		var ns []needle
		var ev []string
		base := g.rng.Float64() * 0.3
		step := (0.9 - base) / float64(links)
		for i, nm := range names {
			var s string
			switch {
			case ho && i == 0:
				s = nm + " was packed with the parcel numbered " + v + "."
			case ho:
				s = "Whatever sat in " + names[i-1] + " was moved into " + nm + "."
			case i == 0:
				s = "Let " + nm + " equal " + v + "."
			default:
				s = "Set " + nm + " to the value of " + names[i-1] + "."
			}
			ns = append(ns, needle{s, q, base + float64(i)*step})
			ev = append(ev, s)
		}
		qs := "Which variables hold the value " + v + "?"
		if ho {
			qs = "Where has the parcel numbered " + v + " been kept?"
		}
		return ns, Query{qs, strings.Join(names, ", "), ev}, nil
	case TaskEntityBridge:
		person := g.hoName()
		org := g.fresh(func() string { return g.pick(hoOrgs) + " " + g.pick(hoOrgKinds) })
		city := g.fresh(func() string { return g.pick(hoPlaces) })
		var a, b, qs string
		if ho {
			a = person + " spent six years on the payroll of " + org + "."
			b = "The head office of " + org + " overlooks the harbour of " + city + "."
			qs = "In which city is the head office of the firm " + person + " worked for?"
		} else {
			a = person + " works for " + org + "."
			b = org + " is based in " + city + "."
			qs = "In which city is the employer of " + person + " based?"
		}
		d := g.rng.Float64() * 0.4
		return []needle{{a, q, d}, {b, q, d + 0.2 + g.rng.Float64()*0.35}}, Query{qs, city, []string{a, b}}, nil
	case TaskDialogueUpdate:
		rel := relatives[q%len(relatives)]
		name := g.fresh(func() string { return g.pick(hoPeople) })
		p1 := g.fresh(func() string { return g.pick(hoPlaces) })
		p2 := g.fresh(func() string { return g.pick(hoPlaces) })
		var who, mid, upd, qs string
		if ho {
			who = "User: You might remember " + name + ", who is my " + rel + "."
			mid = "User: " + name + " took a job in " + p1 + " this spring."
			upd = "User: Big news, " + name + " relocated again and has settled in " + p2 + "."
			qs = "In which city has my " + rel + " settled most recently?"
		} else {
			who = "User: My " + rel + " is called " + name + "."
			mid = "User: " + name + " moved to " + p1 + " last year."
			upd = "User: " + name + " just moved again, to " + p2 + "."
			qs = "Where does my " + rel + " live now?"
		}
		d := g.rng.Float64() * 0.3
		d2 := d + 0.15 + g.rng.Float64()*0.2
		d3 := d2 + 0.15 + g.rng.Float64()*0.2
		return []needle{{who, q, d}, {mid, -1, d2}, {upd, q, d3}}, Query{qs, p2, []string{who, upd}}, nil
	}
	return nil, Query{}, fmt.Errorf("%w: unknown task %q", ErrBadOptions, task)
}
