#!/usr/bin/env python3
"""Build the text corpora of the recall evaluation's own splits (docs/evaluation.md).

    scripts/recall_corpora.py OUTDIR

writes directories of .txt files (standard library only, no network):

  OUTDIR/train-man       English prose of Debian man pages (section 1 except gcloud, every 8th
                         page by name, rendered with man(1) at a wide line length, option lists dropped)
  OUTDIR/train-licenses  /usr/share/common-licenses (GPL, Apache, MPL, ...)
  OUTDIR/train-wordnet   WordNet 3.0 glosses (Debian package wordnet-base: apt-get install
                         wordnet-base), every second synset: "barber: a hairdresser who cuts
                         hair and shaves beards as a trade." -- what words mean, which no
                         essay collection teaches
  OUTDIR/train-synth     paraphrase sentences of this script's own generator (seeded): a
                         fact and a question about it in other words in one sentence,
                         grouped by template so that a document's other sentences are hard
                         negatives; its templates, relations and word lists are disjoint
                         from the evaluation's (eval/gen.go, eval/gen_multihop.go)
  OUTDIR/heldout-go      Go's own documentation: the language spec, memory model, assembler
                         guide and godebug notes of $GOROOT/doc (HTML stripped) and the
                         package comments of every doc.go under $GOROOT/src

The training corpora (with ../shared/haystack) are what `flashmemctl train` fits the text-mode
model on; heldout-go is the haystack of the held-out evaluation split and is never trained on.
The output depends on the packages installed on the machine (man pages, Go version); the
evaluation records which.
"""
import glob
import html
import os
import re
import subprocess
import sys


def sentences_only(text):
    """Keep lines that read as prose: at least 6 words and mostly letters."""
    keep = []
    for para in re.split(r"\n\s*\n", text):
        line = " ".join(para.split())
        words = line.split()
        if len(words) < 6:
            continue
        letters = sum(c.isalpha() for c in line)
        if letters < 0.6 * len(line):
            continue
        keep.append(line)
    return "\n\n".join(keep) + "\n"


def man_pages(out):
    os.makedirs(out, exist_ok=True)
    # The Google Cloud SDK's thousands of generated gcloud pages would drown the rest.
    pages = [p for p in sorted(glob.glob("/usr/share/man/man1/*.1.gz")) if not os.path.basename(p).startswith("gcloud")][::8]
    env = dict(os.environ, MANWIDTH="2000", MAN_KEEP_FORMATTING="0")
    n = 0
    for p in pages:
        try:
            r = subprocess.run(["man", "-l", p], capture_output=True, env=env, timeout=20)
        except subprocess.TimeoutExpired:
            continue
        txt = subprocess.run(["col", "-b"], input=r.stdout, capture_output=True).stdout.decode("utf-8", "replace")
        txt = sentences_only(txt)
        if len(txt) < 400:
            continue
        name = os.path.basename(p)[: -len(".1.gz")]
        with open(os.path.join(out, re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".txt"), "w") as f:
            f.write(txt)
        n += 1
    return n


def licenses(out):
    os.makedirs(out, exist_ok=True)
    n = 0
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        with open(p, encoding="utf-8", errors="replace") as f:
            txt = sentences_only(f.read())
        with open(os.path.join(out, os.path.basename(p) + ".txt"), "w") as f:
            f.write(txt)
        n += 1
    return n


def strip_html(s):
    s = re.sub(r"(?s)<pre.*?</pre>", "\n\n", s)
    s = re.sub(r"(?s)<script.*?</script>|<style.*?</style>", " ", s)
    s = re.sub(r"</?(p|h\d|li|ul|ol|table|tr|div|blockquote)[^>]*>", "\n\n", s)
    s = re.sub(r"<[^>]+>", " ", s)
    return html.unescape(s)


def go_docs(out):
    os.makedirs(out, exist_ok=True)
    root = subprocess.run(["go", "env", "GOROOT"], capture_output=True, text=True).stdout.strip()
    n = 0
    for p in sorted(glob.glob(os.path.join(root, "doc", "*"))):
        if not (p.endswith(".html") or p.endswith(".md")):
            continue
        with open(p, encoding="utf-8", errors="replace") as f:
            s = f.read()
        if p.endswith(".html"):
            s = strip_html(s)
        else:
            s = re.sub(r"(?s)```.*?```", "\n\n", s)
        with open(os.path.join(out, "doc-" + os.path.basename(p).split(".")[0] + ".txt"), "w") as f:
            f.write(sentences_only(s))
        n += 1
    for p in sorted(glob.glob(os.path.join(root, "src", "**", "doc.go"), recursive=True)):
        if "/testdata/" in p or "/vendor/" in p:
            continue
        lines, block = [], False
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                t = line.strip()
                if t.startswith("/*"):
                    block = True
                    t = t[2:]
                if block:
                    if "*/" in t:
                        block = False
                        t = t.split("*/")[0]
                    lines.append(t)
                elif t.startswith("//"):
                    t = t[2:]
                    # Indented lines of a doc comment are code examples.
                    lines.append("" if t.startswith("\t") or t.startswith("  ") else t)
                else:
                    lines.append("")
        txt = sentences_only("\n".join(lines))
        if len(txt) < 400:
            continue
        rel = os.path.relpath(os.path.dirname(p), os.path.join(root, "src")).replace("/", "_")
        with open(os.path.join(out, "pkg-" + rel + ".txt"), "w") as f:
            f.write(txt)
        n += 1
    return n


def wordnet(out):
    os.makedirs(out, exist_ok=True)
    n, buf, part = 0, [], 0
    for pos in ("noun", "verb", "adj", "adv"):
        path = "/usr/share/wordnet/data." + pos
        if not os.path.exists(path):
            sys.exit("wordnet: %s missing (apt-get install wordnet-base)" % path)
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue
                n += 1
                if n % 2:
                    continue
                head, gloss = line.split("|", 1)
                fields = head.split()
                cnt = int(fields[3], 16)
                words = [fields[4 + 2 * i].replace("_", " ") for i in range(cnt)]
                words = [re.sub(r"\(.*\)$", "", w) for w in words]
                gloss = gloss.strip().rstrip(";").strip()
                buf.append(", ".join(words) + ": " + gloss.rstrip(".") + ".")
                if len(buf) == 200:
                    with open(os.path.join(out, "wn-%04d.txt" % part), "w") as g:
                        g.write("\n".join(buf) + "\n")
                    buf, part = [], part + 1
    if buf:
        with open(os.path.join(out, "wn-%04d.txt" % part), "w") as g:
            g.write("\n".join(buf) + "\n")
        part += 1
    return part


# The paraphrase generator's own lexicon. None of these phrases is an evaluation template.
CODE_WORDS = ["number", "code", "figure", "PIN", "passcode", "combination", "identifier",
              "reference", "serial", "key", "token", "tag", "ticket number", "badge number"]
GIVE_VERBS = ["was given", "was assigned", "received", "carries", "is listed with", "goes by",
              "was allotted", "is registered under", "is marked with", "comes with"]
ASK_FORMS = ["When asked for the {c} of {k}, the clerk answered that {k} {v} {x}.",
             "Anyone wondering which {c} belongs to {k} can check the note: {k} {v} {x}.",
             "The {c} that {k} {v} is {x}, in case somebody asks what it is.",
             "To find the {c} for {k}, look it up: {k} {v} {x}.",
             "What {c} does {k} have? It {v} {x}, according to the list."]
TRADES = [("plumber", "fixes the pipes"), ("tailor", "alters my clothes"),
          ("pharmacist", "fills my prescriptions"), ("locksmith", "changes the locks"),
          ("florist", "arranges the flowers"), ("electrician", "repairs the wiring"),
          ("optician", "makes my glasses"), ("mechanic", "repairs the engine"),
          ("gardener", "tends the garden"), ("baker", "bakes our bread"),
          ("cobbler", "mends my shoes"), ("notary", "certifies my documents"),
          ("courier", "delivers my packages"), ("translator", "translates my letters"),
          ("tutor", "helps me with maths"), ("chimney sweep", "cleans the chimney")]
UPDATE_FORMS = ["My {t} used to be {a}, but these days the one who {d} is {b}.",
                "I stopped seeing {a}; now {b} is the {t} who {d}.",
                "Who {d} now? Not {a} any more: my new {t} is {b}."]
CHAIN_FORMS = ["First {a} was set to {x}; then {b} took the value of {a}, so {b} holds {x} too.",
               "Since {b} copies {a}, and {a} stores {x}, both {a} and {b} store {x}.",
               "The value {x} went into {a}, and from {a} it was passed on to {b}."]
BRIDGE_FORMS = ["{p} is employed by {o}, and {o} keeps its offices in {y}, so {p} works in {y}.",
                "{p} joined {o}; the company {o} is headquartered in {y}.",
                "Where does {p} work? At {o}, which operates out of {y}."]
FIRST = ["Arden", "Bexley", "Corwin", "Dalby", "Elspeth", "Farrow", "Greer", "Hadley", "Isolde",
         "Jarvis", "Kestrel", "Linnea", "Mabry", "Norrie", "Orrin", "Pim", "Roan", "Saffi",
         "Tobin", "Wren"]
LAST = ["Ashby", "Brook", "Calder", "Dane", "Ellery", "Frost", "Garvey", "Hale", "Irwin",
        "Jory", "Kirkby", "Lowe", "Marsh", "Nye", "Oakes", "Penn"]
ORGS = ["Quarrymoor", "Tidewell", "Brackenholt", "Stonechat", "Elmsworth", "Fernleigh",
        "Glenmore", "Hartwell", "Kilnsey", "Lowther"]
ORG_KINDS = ["Logistics", "Bakeries", "Instruments", "Publishing", "Software", "Dairy", "Glassworks"]
TOWNS = ["Aberdeen", "Bremen", "Cluj", "Dijon", "Eindhoven", "Florence", "Graz", "Haarlem",
         "Innsbruck", "Jena", "Krakow", "Lyon", "Malmo", "Nantes", "Odense", "Pecs", "Riga",
         "Salzburg", "Turku", "Uppsala", "Vigo", "Wroclaw", "York", "Zurich"]


def synth(out, seed=1, per_template=400):
    import random
    rng = random.Random(seed)
    os.makedirs(out, exist_ok=True)

    def key():
        if rng.random() < 0.5:
            return "%s-%s%d" % (rng.choice(["case", "box", "item", "lot", "file", "order"]),
                                "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2)), rng.randint(10, 999))
        return rng.choice(FIRST) + " " + rng.choice(LAST)

    def val():
        return str(rng.randint(10000, 99999999))

    def ident():
        return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 3)))

    files = 0
    groups = []
    for i, form in enumerate(ASK_FORMS):
        groups.append(("ask%d" % i, lambda form=form: form.format(c=rng.choice(CODE_WORDS), k=key(), v=rng.choice(GIVE_VERBS), x=val())))
    for i, form in enumerate(UPDATE_FORMS):
        def f(form=form):
            t, d = rng.choice(TRADES)
            return form.format(t=t, d=d, a=key(), b=key())
        groups.append(("update%d" % i, f))
    for i, form in enumerate(CHAIN_FORMS):
        groups.append(("chain%d" % i, lambda form=form: form.format(a=ident(), b=ident(), x=val())))
    for i, form in enumerate(BRIDGE_FORMS):
        groups.append(("bridge%d" % i, lambda form=form: form.format(p=key(), o=rng.choice(ORGS) + " " + rng.choice(ORG_KINDS), y=rng.choice(TOWNS))))
    for name, gen in groups:
        for part in range(2):
            lines = [gen() for _ in range(per_template // 2)]
            with open(os.path.join(out, "%s-%d.txt" % (name, part)), "w") as f:
                f.write(" ".join(lines) + "\n")
            files += 1
    return files


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: recall_corpora.py OUTDIR")
    out = sys.argv[1]
    print("train-man", man_pages(os.path.join(out, "train-man")), "files")
    print("train-licenses", licenses(os.path.join(out, "train-licenses")), "files")
    print("train-wordnet", wordnet(os.path.join(out, "train-wordnet")), "files")
    print("train-synth", synth(os.path.join(out, "train-synth")), "files")
    print("heldout-go", go_docs(os.path.join(out, "heldout-go")), "files")


if __name__ == "__main__":
    main()
