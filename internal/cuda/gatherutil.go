package cuda

// gatherFuncs maps gatherKind to the kernel's name in gather.cu.
var gatherFuncs = map[string]string{"simt4": "fm_gather", "simt8": "fm_gather8", "p256": "fm_gather_p256", "bulk": "fm_gather_bulk"}

// splitDescs appends descs to dst with every row longer than piece cut into the fewest
// pieces of at most piece bytes, of equal size rounded up to 16 bytes (so aligned rows
// stay aligned and no block gets a short leftover). piece must be a multiple of 16.
func splitDescs(dst, descs []CopyDesc, piece uint64) []CopyDesc {
	for _, c := range descs {
		if c.Len == 0 {
			continue
		}
		k := (c.Len + piece - 1) / piece
		size := ((c.Len+k-1)/k + 15) &^ 15
		for c.Len > size {
			dst = append(dst, CopyDesc{Src: c.Src, Dst: c.Dst, Len: size})
			c.Src += DevPtr(size)
			c.Dst += DevPtr(size)
			c.Len -= size
		}
		dst = append(dst, c)
	}
	return dst
}

// countPieces returns how many pieces splitDescs makes of descs.
func countPieces(descs []CopyDesc, piece uint64) int {
	n := 0
	for _, c := range descs {
		n += int((c.Len + piece - 1) / piece)
	}
	return n
}

// allAligned reports whether every row's src, dst and length are multiples of align.
func allAligned(descs []CopyDesc, align uint64) bool {
	for _, c := range descs {
		if (uint64(c.Src)|uint64(c.Dst)|c.Len)%align != 0 {
			return false
		}
	}
	return true
}

// splitAt returns how many leading descriptors make up about share of descs' bytes.
func splitAt(descs []CopyDesc, share float64) int {
	var total uint64
	for _, c := range descs {
		total += c.Len
	}
	want := uint64(share * float64(total))
	var acc uint64
	for i, c := range descs {
		if acc >= want {
			return i
		}
		acc += c.Len
	}
	return len(descs)
}
