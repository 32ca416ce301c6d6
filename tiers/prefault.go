package tiers

// A reserve slot's memory (a memfd) is supplied by the kernel on first
// touch: the first copy into each slot allocates and zeroes its pages inside
// the copy. In a fresh session that is every recall of its first cycles, and
// with many sessions starting at once it was 37 % of the daemon's CPU in the
// decode of the simulator's CI run, on the path of the recalls the next
// cycle waits for (docs/benchmarks.md, "SSD as a capacity tier"). So a
// region keeps the slots its allocations will take next populated ahead of
// them, in the background: free slots are taken lowest first, so those are
// the slots just above the highest one ever allocated. Only memory that is
// about to be used is touched: prefaultAhead bytes of slots at most beyond
// it (a reserve up to that size is populated whole at OPEN, a larger one
// is not).

// prefaultAhead is how far ahead of the highest slot ever allocated the
// prefaulter keeps slots populated. A reserve this size or smaller is
// populated whole when it is created, before its session decodes; with
// 16 MiB the simulator's reserves (25 MB) were still being populated while
// every session's first selection was recalled, the prefaulter competing
// with those recalls for the CPU (10 A/B pairs with 2 CPU burners: 11
// sessions blocked at cycle 1 with 16 MiB, 2 with 64 MiB).
const prefaultAhead = 64 << 20

// prefaultLocked starts the prefaulter if slots up to used plus the
// look-ahead are not populated yet; mu is held.
func (r *Region) prefaultLocked() {
	if r.prefaulting || r.closed {
		return
	}
	if _, ok := r.mem.(populater); !ok {
		return
	}
	target := r.prefaultTarget()
	if target <= r.populated {
		return
	}
	r.prefaulting = true
	r.prefaultWG.Add(1)
	go r.prefault()
}

func (r *Region) prefaultTarget() int32 {
	ahead := int64(prefaultAhead / max(r.geo.pageBytes, 1))
	return int32(min(int64(r.nslots), int64(r.used)+max(ahead, 1)))
}

// prefault populates slots until it has caught up with the allocations.
func (r *Region) prefault() {
	defer r.prefaultWG.Done()
	p := r.mem.(populater)
	for {
		r.mu.Lock()
		from, to := r.populated, r.prefaultTarget()
		if r.closed || to <= from {
			r.prefaulting = false
			r.mu.Unlock()
			return
		}
		r.populated = to
		r.mu.Unlock()
		p.populate(r.slotRanges(int(from), int(to)))
	}
}

// slotRanges are the byte ranges of the region that slots [from, to) occupy.
func (r *Region) slotRanges(from, to int) [][2]int64 {
	if r.geo.layout.PageMajor {
		// Slot s is [s·stride, (s+1)·stride), every layer inside it.
		return [][2]int64{{int64(from) * r.stride[0], int64(to) * r.stride[0]}}
	}
	out := make([][2]int64, len(r.layerOff))
	for l := range r.layerOff {
		out[l] = [2]int64{r.layerOff[l] + int64(from)*r.stride[l], r.layerOff[l] + int64(to)*r.stride[l]}
	}
	return out
}
