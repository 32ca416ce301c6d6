package attn

import "math"

// BF16ToF32 widens a bfloat16 (the upper half of a float32); exact.
func BF16ToF32(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// BF16FromF32 rounds to bfloat16 to nearest, ties to even, exactly as torch
// (c10::BFloat16): NaN becomes the quiet NaN 0x7FC0 and overflow rounds to ±Inf.
func BF16FromF32(f float32) uint16 {
	if f != f {
		return 0x7fc0
	}
	u := math.Float32bits(f)
	return uint16((u + 0x7fff + (u>>16)&1) >> 16)
}

// RoundBF16 rounds f to the nearest bfloat16 value and returns it as float32.
func RoundBF16(f float32) float32 { return BF16ToF32(BF16FromF32(f)) }

// FP8MaxE4M3 is the largest finite float8_e4m3fn value.
const FP8MaxE4M3 = 448

// fp8Table maps every e4m3fn code to its float32 value; decoding is a table
// lookup because the key store decodes whole blocks per scoring pass.
var fp8Table = func() (t [256]float32) {
	for c := range t {
		t[c] = fp8Decode(uint8(c))
	}
	return t
}()

func fp8Decode(c uint8) float32 {
	exp := int(c>>3) & 0xf
	mant := float64(c & 7)
	var v float64
	switch {
	case exp == 0xf && c&7 == 7:
		v = math.NaN()
	case exp == 0:
		v = mant * (1.0 / 512) // subnormal: m · 2^-9
	default:
		v = math.Ldexp(1+mant/8, exp-7)
	}
	if c&0x80 != 0 {
		v = -v
	}
	return float32(v)
}

// FP8ToF32 decodes a float8_e4m3fn code (bias 7, no infinities, 0x7F/0xFF NaN).
func FP8ToF32(c uint8) float32 { return fp8Table[c] }

// FP8FromF32 converts to float8_e4m3fn as torch's cast does
// (c10::detail::fp8e4m3fn_from_fp32_value): round to nearest even; magnitudes
// that round above 448 (from 464 exclusive), infinities and NaN become NaN with
// the input's sign. It does not saturate.
func FP8FromF32(f float32) uint8 {
	const (
		fp8Max     = uint32(1087) << 20 // 480.0: first magnitude whose rounding leaves the finite range
		denormMask = uint32(141) << 23  // 2^14: adding it rounds to a multiple of 2^-9
		minNormal  = uint32(121) << 23  // 2^-6
	)
	bits := math.Float32bits(f)
	sign := bits & 0x80000000
	bits ^= sign
	var r uint8
	switch {
	case bits >= fp8Max:
		r = 0x7f
	case bits < minNormal:
		// The float32 adder does the round-to-nearest-even into the subnormal grid.
		b := math.Float32bits(math.Float32frombits(bits) + math.Float32frombits(denormMask))
		r = uint8(b - denormMask)
	default:
		odd := (bits >> 20) & 1
		bits += 0xc4000000 + 0x7ffff // rebias exponent (7-127)<<23, rounding bias
		bits += odd
		r = uint8(bits >> 20)
	}
	return r | uint8(sign>>24)
}
