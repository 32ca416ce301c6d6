#!/usr/bin/env python3
"""Build the text corpora of the recall evaluation's own splits (docs/evaluation.md).

    scripts/recall_corpora.py OUTDIR

writes directories of .txt files (standard library only, no network):

  OUTDIR/train-man       English prose of Debian man pages (section 1 except gcloud, every 8th
                         page by name, rendered with man(1) at a wide line length, option lists dropped)
  OUTDIR/train-licenses  /usr/share/common-licenses (GPL, Apache, MPL, ...)
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


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: recall_corpora.py OUTDIR")
    out = sys.argv[1]
    print("train-man", man_pages(os.path.join(out, "train-man")), "files")
    print("train-licenses", licenses(os.path.join(out, "train-licenses")), "files")
    print("heldout-go", go_docs(os.path.join(out, "heldout-go")), "files")


if __name__ == "__main__":
    main()
