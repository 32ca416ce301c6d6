package attn

// useFast selects the assembly kernel; tests switch it off to compare with the
// portable kernel.
var useFast = hasAVX2FMA

// kernel adds to acc the weighted ReLU sums of a decoded key block k against
// groups of 4 query rows; next (the codes of the block scored after this one)
// is only a prefetch hint.
func kernel(k, q, w []float32, groups, d int, acc *[blockKeys]float32, next []uint8) {
	if useFast && groups > 0 && d > 0 {
		_ = k[d*blockKeys-1]
		_ = q[groups*d*rowsPerGroup-1]
		_ = w[groups*rowsPerGroup-1]
		kernelAVX2(&k[0], &q[0], &w[0], groups, d, &acc[0], &next[0])
		return
	}
	kernelGo(k, q, w, groups, d, acc)
}
