// Package textmode is FlashMemory's text-mode indexer: a dual encoder that
// scores a context's chunks for a question plus the answer tokens generated so
// far, trained by the project's own Go code without any language model. It is
// what selects resident pages when no DeepSeek-V4 (and so no LSA Memory
// Indexer) runs — evaluation, the tiering simulator, and the embedded default.
//
// It produces the same thing as the LSA scorer: one logit per chunk, logit > 0
// meaning "keep", so indexer Level-1 selection (sink, tail, densest pages),
// lookahead and the tiers run unchanged.
//
// # Pieces
//
//   - Tokenize: a deterministic tokenizer with no vocabulary file (letter runs
//     split into ≤ 10-letter pieces, digit runs into ≤ 3-digit groups, single
//     punctuation runes). Term IDs are FNV-1a hashes of the lower-cased,
//     lightly stemmed token. Four tokens make a chunk (TokensPerChunk).
//   - Chunk keys (AppendChunkKeys): KeyBytes per chunk, 132 with
//     DefaultConfig, like an LSA index key — the chunk encoder's unit vector as
//     int8 plus a float32 scale, up to 29 16-bit lexical terms (the chunk's
//     own, then the rarest of the 16 tokens on each side) and a mask of the
//     terms the training corpus never saw (a Bloom filter of its vocabulary
//     ships in the model). The daemon stores them as opaque bytes.
//   - Queries (NewQuery, AppendBinary / ParseQuery): the query encoder's unit
//     vector and the question's and answer's terms, in a fixed-size wire form.
//   - Score: per chunk, logit = a·lexical + b·cosine + c with (a, b, c) per Mode
//     from the model file. The lexical signal is BM25-like, with IDF taken over
//     the context's own chunk keys and relative to the best-matching chunk (and,
//     for a question about two things, to the best chunk of the terms that
//     chunk lacks); a dilation gives neighbours of strong chunks a share of
//     their logit (so a sentence cut by a page boundary still counts on both
//     pages), and up to three rounds of relevance feedback follow names —
//     words rare in the context and in training, or two-word names rare as a
//     pair — from kept chunks to the chunks that mention them (multi-hop
//     evidence such as variable chains). Score therefore needs all keys of a
//     request at once.
//   - Learned mode (the evaluation's "trained"): the lexical machinery with a
//     term weighting fitted on training pseudo-queries (TermWeighting:
//     cidf^p · idf^q, window weight) instead of the hand-set cidf^3 rule,
//     plus the dense signal, by a fitted calibration (fitLearned,
//     FitLearned for an existing model).
//   - Dictionary (dict.go): headwords of the training text's glosses
//     ("barber: a hairdresser who cuts hair …") indexed by their words. The
//     Learned and Combined modes borrow a gloss's headwords when it holds two
//     of the question's words and one of them occurs nowhere in the context,
//     so "Who cuts my hair these days?" finds "… is my barber from now on.";
//     Lexical never does.
//   - Train: IDF statistics over the corpus, then InfoNCE with in-batch
//     negatives on (sentence → a chunk inside it, with the chunk's own words
//     masked out of the sentence half of the time) pairs, hashed unigram and
//     bigram embeddings pooled with IDF weights and a projection per side, Adam
//     for the projections and sparse Adagrad for the embedding rows; parallel
//     and bit-for-bit deterministic for a seed whatever the worker count. A
//     calibration then fits, per Mode, the direction of (lexical, cosine) by
//     logistic regression on held-out pseudo-queries and places the threshold
//     where 1 % of unrelated chunks pass.
//   - Save / Load: safetensors through internal/safetensors (embedding table in
//     F16), with the configuration and what the model was trained on in the
//     metadata; Load checks names, dtypes, shapes and finiteness.
//
// # Use
//
//	m, err := textmode.Load(fileBytes)
//	keys := m.AppendChunkKeys(nil, textmode.Tokenize(context))
//	q := m.NewQuery(textmode.Tokenize(question), textmode.Tokenize(answerSoFar), textmode.Combined)
//	logits := make([]float32, len(keys)/m.KeyBytes())
//	err = m.Score(q, keys, logits)
//
// The shipped default is models/textmode-default.safetensors (see
// models/README.md), embedded in flashmemd by package models and registered
// there as the model "text" through Scorer, the indexer.Scorer adapter;
// `flashmemctl train` retrains it.
package textmode
