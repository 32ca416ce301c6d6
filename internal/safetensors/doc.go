// Package safetensors reads and writes the safetensors tensor-file format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length, a JSON header that maps tensor names to dtype, shape and data_offsets
// (plus an optional "__metadata__" object of string pairs), then the raw
// little-endian tensor bytes.
//
// The reader is strict because weight files come from outside the daemon: the
// header length is bounded before anything is allocated, every tensor's byte span
// must lie inside the data section, spans must tile the data section without
// overlaps or gaps (as the reference implementation requires), and
// shape × dtype size must equal the span. Every error wraps one of the sentinel
// errors below and names the tensor and the expected and actual values.
//
// Typical use:
//
//	f, err := safetensors.Open("indexer.safetensors")
//	if err != nil { ... }
//	defer f.Close()
//	t, err := f.Tensor("l10.wq_a")
//	w, err := t.Float32s() // F32, BF16 or F16 data as float32
//
// Write produces files that this reader and the Python safetensors library accept;
// tests, the training tool and model export use it.
package safetensors
