package indexer

import (
	"bytes"
	"testing"
)

// Truncate undoes an append: the request is as before it, and the same
// chunks can be appended again, byte for byte.
func TestRequestTruncateUndoesAppend(t *testing.T) {
	m := fuzzModel(t)
	r, err := NewRequest(m, fuzzPolicy())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.AppendKeys(0, m.RandomKeys(1, 10)); err != nil {
		t.Fatal(err)
	}
	before, _ := r.MarshalBinary()
	more := m.RandomKeys(2, 5)
	if err := r.AppendKeys(10, more); err != nil {
		t.Fatal(err)
	}
	r.Truncate(10)
	if r.Len() != 10 {
		t.Fatalf("Len %d after Truncate(10)", r.Len())
	}
	if after, _ := r.MarshalBinary(); !bytes.Equal(before, after) {
		t.Fatal("state after append+truncate differs from before the append")
	}
	r.Truncate(99) // past the end: nothing
	if err := r.AppendKeys(10, more); err != nil || r.Len() != 15 {
		t.Fatalf("re-append: %v, Len %d", err, r.Len())
	}
}
