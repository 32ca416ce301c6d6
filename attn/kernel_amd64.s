#include "textflag.h"

// func kernelAVX2(k, q, w *float32, groups, d int, acc *float32)
//
// For each group of 4 query rows: 12 accumulators (3 vectors of 8 keys × 4 rows)
// over the head dim, then ReLU and the weighted sum of the 4 rows into acc[0:24].
// k is a decoded key block [d][24]; q is [groups][d][4]; w is [groups][4].
TEXT ·kernelAVX2(SB), NOSPLIT, $0-48
	MOVQ k+0(FP), SI
	MOVQ q+8(FP), DI
	MOVQ w+16(FP), R8
	MOVQ groups+24(FP), R9
	MOVQ d+32(FP), R10
	MOVQ acc+40(FP), R11
	TESTQ R9, R9
	JLE  done

group:
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11
	MOVQ SI, AX
	MOVQ R10, CX
	SHRQ $2, CX
	JZ   tail

quad:
#define STEP(koff, qoff) \
	VMOVUPS koff(AX), Y12 \
	VMOVUPS koff+32(AX), Y13 \
	VMOVUPS koff+64(AX), Y14 \
	VBROADCASTSS qoff(DI), Y15 \
	VFMADD231PS Y12, Y15, Y0 \
	VFMADD231PS Y13, Y15, Y1 \
	VFMADD231PS Y14, Y15, Y2 \
	VBROADCASTSS qoff+4(DI), Y15 \
	VFMADD231PS Y12, Y15, Y3 \
	VFMADD231PS Y13, Y15, Y4 \
	VFMADD231PS Y14, Y15, Y5 \
	VBROADCASTSS qoff+8(DI), Y15 \
	VFMADD231PS Y12, Y15, Y6 \
	VFMADD231PS Y13, Y15, Y7 \
	VFMADD231PS Y14, Y15, Y8 \
	VBROADCASTSS qoff+12(DI), Y15 \
	VFMADD231PS Y12, Y15, Y9 \
	VFMADD231PS Y13, Y15, Y10 \
	VFMADD231PS Y14, Y15, Y11

	STEP(0, 0)
	STEP(96, 16)
	STEP(192, 32)
	STEP(288, 48)
	ADDQ $384, AX
	ADDQ $64, DI
	DECQ CX
	JNZ  quad

tail:
	MOVQ R10, CX
	ANDQ $3, CX
	JZ   reduce

single:
	STEP(0, 0)
	ADDQ $96, AX
	ADDQ $16, DI
	DECQ CX
	JNZ  single

reduce:
	// ReLU: max(0, x) with x as the second source, so NaN is kept (torch's ReLU).
	VXORPS Y12, Y12, Y12
	VMAXPS Y0, Y12, Y0
	VMAXPS Y1, Y12, Y1
	VMAXPS Y2, Y12, Y2
	VMAXPS Y3, Y12, Y3
	VMAXPS Y4, Y12, Y4
	VMAXPS Y5, Y12, Y5
	VMAXPS Y6, Y12, Y6
	VMAXPS Y7, Y12, Y7
	VMAXPS Y8, Y12, Y8
	VMAXPS Y9, Y12, Y9
	VMAXPS Y10, Y12, Y10
	VMAXPS Y11, Y12, Y11
	VMOVUPS 0(R11), Y13
	VMOVUPS 32(R11), Y14
	VMOVUPS 64(R11), Y15
	VBROADCASTSS 0(R8), Y12
	VFMADD231PS Y0, Y12, Y13
	VFMADD231PS Y1, Y12, Y14
	VFMADD231PS Y2, Y12, Y15
	VBROADCASTSS 4(R8), Y12
	VFMADD231PS Y3, Y12, Y13
	VFMADD231PS Y4, Y12, Y14
	VFMADD231PS Y5, Y12, Y15
	VBROADCASTSS 8(R8), Y12
	VFMADD231PS Y6, Y12, Y13
	VFMADD231PS Y7, Y12, Y14
	VFMADD231PS Y8, Y12, Y15
	VBROADCASTSS 12(R8), Y12
	VFMADD231PS Y9, Y12, Y13
	VFMADD231PS Y10, Y12, Y14
	VFMADD231PS Y11, Y12, Y15
	VMOVUPS Y13, 0(R11)
	VMOVUPS Y14, 32(R11)
	VMOVUPS Y15, 64(R11)
	ADDQ $16, R8
	DECQ R9
	JNZ  group

done:
	VZEROUPPER
	RET

// func dotAVX2(a, b *float32, n int) float32
//
// Σ a[i]·b[i] over n elements, n a multiple of 32: four 8-lane accumulators hide
// the FMA latency; the lanes are summed at the end.
TEXT ·dotAVX2(SB), NOSPLIT, $0-28
	MOVQ a+0(FP), SI
	MOVQ b+8(FP), DI
	MOVQ n+16(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	SHRQ $5, CX
	JZ   dotsum

dotloop:
	VMOVUPS 0(SI), Y4
	VMOVUPS 32(SI), Y5
	VMOVUPS 64(SI), Y6
	VMOVUPS 96(SI), Y7
	VFMADD231PS 0(DI), Y4, Y0
	VFMADD231PS 32(DI), Y5, Y1
	VFMADD231PS 64(DI), Y6, Y2
	VFMADD231PS 96(DI), Y7, Y3
	ADDQ $128, SI
	ADDQ $128, DI
	DECQ CX
	JNZ  dotloop

dotsum:
	VADDPS Y1, Y0, Y0
	VADDPS Y3, Y2, Y2
	VADDPS Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS X1, X0, X0
	VHADDPS X0, X0, X0
	VHADDPS X0, X0, X0
	VMOVSS X0, ret+24(FP)
	VZEROUPPER
	RET

// func decodeFP8AVX2(dst *float32, src *uint8, n int)
//
// Widens n (a multiple of 8) fp8 e4m3fn codes to float32. An e4m3 code shifted
// left by 7 is a float16 with the same mantissa and an exponent 8 too small, for
// normal and subnormal codes alike; VCVTPH2PS then widens exactly and ×256 fixes
// the exponent. The NaN codes 0x7F/0xFF come out as ±480: the key store tracks
// keys holding them and overrides their logits with NaN.
TEXT ·decodeFP8AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	MOVL $0x3f80, AX
	VMOVD AX, X8
	VPBROADCASTW X8, X8
	MOVL $0x8000, AX
	VMOVD AX, X9
	VPBROADCASTW X9, X9
	MOVL $0x43800000, AX
	VMOVD AX, X10
	VBROADCASTSS X10, Y10
	SHRQ $3, CX
	JZ   decdone

decloop:
	VPMOVZXBW (SI), X0
	VPSLLW $7, X0, X1
	VPAND X8, X1, X1
	VPSLLW $8, X0, X2
	VPAND X9, X2, X2
	VPOR X2, X1, X1
	VCVTPH2PS X1, Y1
	VMULPS Y10, Y1, Y1
	VMOVUPS Y1, (DI)
	ADDQ $8, SI
	ADDQ $32, DI
	DECQ CX
	JNZ  decloop

decdone:
	VZEROUPPER
	RET

// func dotBF16AVX2(a *uint16, b *float32, n int) float32
//
// Σ bf16(a[i])·b[i] over n elements, n a multiple of 32. A bf16 is the upper half
// of a float32, so widening is a zero-extend and a 16-bit shift.
TEXT ·dotBF16AVX2(SB), NOSPLIT, $0-28
	MOVQ a+0(FP), SI
	MOVQ b+8(FP), DI
	MOVQ n+16(FP), CX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	SHRQ $5, CX
	JZ   bdotsum

bdotloop:
	VPMOVZXWD 0(SI), Y4
	VPMOVZXWD 16(SI), Y5
	VPMOVZXWD 32(SI), Y6
	VPMOVZXWD 48(SI), Y7
	VPSLLD $16, Y4, Y4
	VPSLLD $16, Y5, Y5
	VPSLLD $16, Y6, Y6
	VPSLLD $16, Y7, Y7
	VFMADD231PS 0(DI), Y4, Y0
	VFMADD231PS 32(DI), Y5, Y1
	VFMADD231PS 64(DI), Y6, Y2
	VFMADD231PS 96(DI), Y7, Y3
	ADDQ $64, SI
	ADDQ $128, DI
	DECQ CX
	JNZ  bdotloop

bdotsum:
	VADDPS Y1, Y0, Y0
	VADDPS Y3, Y2, Y2
	VADDPS Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS X1, X0, X0
	VHADDPS X0, X0, X0
	VHADDPS X0, X0, X0
	VMOVSS X0, ret+24(FP)
	VZEROUPPER
	RET
