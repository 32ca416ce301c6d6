#include "textflag.h"

// DOT4START loads the arguments shared by dot4AVX2 and dot4BF16AVX2: SI the
// weight row, DI/R9/R10/R8 the four input vectors, CX the count of 8-element
// steps, R11 out; and zeroes the eight float64 accumulators.
#define DOT4START \
	MOVQ a+0(FP), SI \
	MOVQ x+8(FP), DI \
	MOVQ stride+16(FP), R8 \
	MOVQ n+24(FP), CX \
	MOVQ out+32(FP), R11 \
	SHLQ $3, R8 \
	LEAQ (DI)(R8*1), R9 \
	LEAQ (R9)(R8*1), R10 \
	ADDQ R10, R8 \
	VXORPD Y0, Y0, Y0 \
	VXORPD Y1, Y1, Y1 \
	VXORPD Y2, Y2, Y2 \
	VXORPD Y3, Y3, Y3 \
	VXORPD Y4, Y4, Y4 \
	VXORPD Y5, Y5, Y5 \
	VXORPD Y6, Y6, Y6 \
	VXORPD Y7, Y7, Y7 \
	SHRQ $3, CX

// func kernelAVX2(k, q, w *float32, groups, d int, acc *float32, next *uint8)
//
// For each group of 4 query rows: 12 accumulators (3 vectors of 8 keys × 4 rows)
// over the head dim, then ReLU and the weighted sum of the 4 rows into acc[0:24].
// k is a decoded key block [d][24]; q is [groups][d][4]; w is [groups][4].
// Each group also prefetches two cache lines of next, the fp8 codes of the block
// the caller decodes after this one, so that decoding it does not wait for DRAM.
TEXT ·kernelAVX2(SB), NOSPLIT, $0-56
	MOVQ k+0(FP), SI
	MOVQ q+8(FP), DI
	MOVQ w+16(FP), R8
	MOVQ groups+24(FP), R9
	MOVQ d+32(FP), R10
	MOVQ acc+40(FP), R11
	MOVQ next+48(FP), DX
	TESTQ R9, R9
	JLE  done

group:
	PREFETCHT0 0(DX)
	PREFETCHT0 64(DX)
	ADDQ $128, DX
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

// func dot4AVX2(a *float32, x *float64, stride, n int, out *float64)
//
// out[v] = Σ_i a[i]·x[v·stride+i] for v < 4 and n a multiple of 8, accumulated in
// float64: one pass over the weight row a serves four input vectors, because the
// projections are bound by reading the weights. At that bandwidth the float64
// FMAs cost nothing, and they make q round to the same bf16 as the exact value,
// where a float32 sum of thousands of terms often lands on the other neighbour.
TEXT ·dot4AVX2(SB), NOSPLIT, $0-40
	DOT4START
	JZ   d4sum

d4loop:
	VCVTPS2PD 0(SI), Y8
	VCVTPS2PD 16(SI), Y9
	ADDQ $32, SI

#define FMA4 \
	VFMADD231PD 0(DI), Y8, Y0 \
	VFMADD231PD 32(DI), Y9, Y1 \
	VFMADD231PD 0(R9), Y8, Y2 \
	VFMADD231PD 32(R9), Y9, Y3 \
	VFMADD231PD 0(R10), Y8, Y4 \
	VFMADD231PD 32(R10), Y9, Y5 \
	VFMADD231PD 0(R8), Y8, Y6 \
	VFMADD231PD 32(R8), Y9, Y7 \
	ADDQ $64, DI \
	ADDQ $64, R9 \
	ADDQ $64, R10 \
	ADDQ $64, R8

	FMA4
	DECQ CX
	JNZ  d4loop

d4sum:
#define HSUM(lo, hi, xlo, off) \
	VADDPD hi, lo, lo \
	VEXTRACTF128 $1, lo, X8 \
	VADDPD X8, xlo, xlo \
	VHADDPD xlo, xlo, xlo \
	VMOVSD xlo, off(R11)

	HSUM(Y0, Y1, X0, 0)
	HSUM(Y2, Y3, X2, 8)
	HSUM(Y4, Y5, X4, 16)
	HSUM(Y6, Y7, X6, 24)
	VZEROUPPER
	RET

// func dot4BF16AVX2(a *uint16, x *float64, stride, n int, out *float64)
//
// dot4AVX2 for a bf16 weight row: a bf16 is the upper half of a float32, so
// widening is a zero-extend and a 16-bit shift.
TEXT ·dot4BF16AVX2(SB), NOSPLIT, $0-40
	DOT4START
	JZ   b4sum

b4loop:
	VPMOVZXWD 0(SI), Y10
	VPSLLD $16, Y10, Y10
	ADDQ $16, SI
	VCVTPS2PD X10, Y8
	VEXTRACTF128 $1, Y10, X10
	VCVTPS2PD X10, Y9
	FMA4
	DECQ CX
	JNZ  b4loop

b4sum:
	HSUM(Y0, Y1, X0, 0)
	HSUM(Y2, Y3, X2, 8)
	HSUM(Y4, Y5, X4, 16)
	HSUM(Y6, Y7, X6, 24)
	VZEROUPPER
	RET
