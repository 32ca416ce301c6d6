package indexer_test

import (
	"fmt"

	"github.com/flashmemory/flashmemory/indexer"
)

// A request grows over two cycles; each cycle reports the set in use now, the new selection
// and the diff for the mover.
func Example() {
	m, err := indexer.RandomModel(1, indexer.ModelConfig{Layers: []int{10, 12, 20}, Hidden: 64, QLoraRank: 32, Heads: 4, HeadDim: 128})
	if err != nil {
		panic(err)
	}
	p := indexer.DefaultPolicy()
	p.FirstKeep, p.LastKeep, p.KMax, p.FallbackRatio = 64, 64, 4, 1 // a short context
	req, err := indexer.NewRequest(m, p)
	if err != nil {
		panic(err)
	}
	for cycle, chunks := range []int{640, 700} {
		if err := req.AppendKeys(req.Len(), m.RandomKeys(uint64(cycle), chunks-req.Len())); err != nil {
			panic(err)
		}
		cs, err := indexer.ScoreBatch([]*indexer.Request{req}, []indexer.Query{m.RandomQuery(uint64(cycle), int64(4*chunks))})
		if err != nil {
			panic(err)
		}
		c := cs[0]
		fmt.Printf("cycle %d: %d chunks, %d pages, forced %d, KMAX %d\n", c.Cycle, c.Chunks, c.Pages, c.ForcedPages, c.KMax)
		fmt.Printf("  use %v selected %v recall %v release %v\n", c.Use, c.Selected, c.Recall, c.Release)
	}
	// Output:
	// cycle 1: 640 chunks, 10 pages, forced 2, KMAX 4
	//   use [0 9] selected [0 2 6 9] recall [2 6] release []
	// cycle 2: 700 chunks, 11 pages, forced 3, KMAX 4
	//   use [0 2 6 9 10] selected [0 6 9 10] recall [] release [2]
}
