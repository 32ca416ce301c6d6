package attn

// useFast selects the assembly kernel; tests switch it off to compare with the
// portable kernel.
var useFast = hasAVX2FMA

func kernel(k, q, w []float32, groups, d int, acc *[blockKeys]float32) {
	if useFast && groups > 0 && d > 0 {
		_ = k[d*blockKeys-1]
		_ = q[groups*d*rowsPerGroup-1]
		_ = w[groups*rowsPerGroup-1]
		kernelAVX2(&k[0], &q[0], &w[0], groups, d, &acc[0])
		return
	}
	kernelGo(k, q, w, groups, d, acc)
}
