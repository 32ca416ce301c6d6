package cuda

// splitDescs appends descs to dst with every row longer than piece cut into pieces of at
// most piece bytes (piece is a multiple of 16, so aligned rows stay aligned).
func splitDescs(dst, descs []CopyDesc, piece uint64) []CopyDesc {
	for _, c := range descs {
		for c.Len > piece {
			dst = append(dst, CopyDesc{Src: c.Src, Dst: c.Dst, Len: piece})
			c.Src += DevPtr(piece)
			c.Dst += DevPtr(piece)
			c.Len -= piece
		}
		if c.Len > 0 {
			dst = append(dst, c)
		}
	}
	return dst
}
