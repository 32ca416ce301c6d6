package textmode

import (
	"fmt"
	"testing"

	"os"
)

func TestZZIDF(t *testing.T) {
	b, err := os.ReadFile("../../models/textmode-default.safetensors")
	if err != nil {
		t.Skip()
	}
	m, err := Load(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"Ingrid", "Fenella", "Ilse", "Valentin", "11", "43", "10", "59", "Basket", "Locker", "Crate", "register", "RTF", "directional", "complexity", "reduce", "jsontext", "1970", "Sapporo", "Dunedin"} {
		tk := Tokenize(w)
		id := tk[0].ID
		bk := m.bucket(id)
		fmt.Printf("%-12s idf %.2f known %v\n", w, m.idf[bk], !m.novel(id))
	}
}
