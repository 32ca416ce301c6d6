package proto

import (
	"encoding/binary"
	"fmt"
	"math"
	"unicode/utf8"
)

// Body field limits. Decoders reject larger values with ErrMalformed before
// allocating; encoders refuse to produce them.
const (
	// MaxNameLen bounds session, model and client names (bytes of UTF-8).
	MaxNameLen = 255
	// MaxErrorMsg bounds the message of an error frame or CYCLE entry.
	MaxErrorMsg = 1024
	// MaxLayers bounds the KV layers of a layout (including offloaded
	// index-key layers).
	MaxLayers = 1024
	// MaxSegments bounds the segments of one layer.
	MaxSegments = 16
	// MaxTargetLayers bounds the target layers of a layout, and so the
	// queries of one CYCLE entry.
	MaxTargetLayers = 64
	// MaxCycleEntries bounds the sessions of one CYCLE frame.
	MaxCycleEntries = 4096
	// MaxLeases bounds the lease ids of one RELEASE frame.
	MaxLeases = 65536
)

// enc appends little-endian fields to a byte slice.
type enc struct{ b []byte }

func (e *enc) u16(v uint16) { e.b = binary.LittleEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) f64(v float64) {
	e.b = binary.LittleEndian.AppendUint64(e.b, math.Float64bits(v))
}
func (e *enc) bool32(v bool) {
	if v {
		e.u32(1)
	} else {
		e.u32(0)
	}
}

// str writes a u16 length and the bytes; it fails on invalid UTF-8 or a
// string longer than max.
func (e *enc) str(field, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%w: %s is %d bytes, at most %d", ErrMalformed, field, len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not UTF-8", ErrMalformed, field)
	}
	e.u16(uint16(len(s)))
	e.b = append(e.b, s...)
	return nil
}

// blob writes a u32 length and the bytes.
func (e *enc) blob(field string, p []byte) error {
	if uint64(len(p)) > uint64(MaxBodyLimit) {
		return fmt.Errorf("%w: %s is %d bytes", ErrMalformed, field, len(p))
	}
	e.u32(uint32(len(p)))
	e.b = append(e.b, p...)
	return nil
}

// dec reads little-endian fields with a sticky error: after the first
// failure every read returns zero, so decoders check d.err once at the end
// (and before any allocation sized by a count).
type dec struct {
	b   []byte
	off int
	err error
	msg string // which message, for error text
}

func newDec(msg string, b []byte) *dec { return &dec{b: b, msg: msg} }

func (d *dec) rem() int { return len(d.b) - d.off }

func (d *dec) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s at byte %d: %s", ErrMalformed, d.msg, d.off, fmt.Sprintf(format, args...))
	}
}

func (d *dec) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > d.rem() {
		d.err = fmt.Errorf("%w: %w: %s at byte %d: need %d bytes, %d left", ErrMalformed, ErrTruncated, d.msg, d.off, n, d.rem())
		return nil
	}
	p := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return p
}

func (d *dec) u16() uint16 {
	if p := d.take(2); p != nil {
		return binary.LittleEndian.Uint16(p)
	}
	return 0
}

func (d *dec) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (d *dec) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (d *dec) f64() float64 { return math.Float64frombits(d.u64()) }

// bool32 reads a u32 that must be 0 or 1.
func (d *dec) bool32(field string) bool {
	v := d.u32()
	if v > 1 {
		d.fail("%s is %d, want 0 or 1", field, v)
	}
	return v == 1
}

func (d *dec) str(field string, max int) string {
	n := int(d.u16())
	if d.err == nil && n > max {
		d.fail("%s is %d bytes, at most %d", field, n, max)
	}
	p := d.take(n)
	if d.err != nil {
		return ""
	}
	if !utf8.Valid(p) {
		d.fail("%s is not UTF-8", field)
		return ""
	}
	return string(p)
}

// blob reads a u32 length and returns the bytes aliasing the body.
func (d *dec) blob() []byte {
	n := d.u32()
	if d.err != nil {
		return nil
	}
	if uint64(n) > uint64(d.rem()) {
		d.err = fmt.Errorf("%w: %w: %s at byte %d: blob of %d bytes, %d left", ErrMalformed, ErrTruncated, d.msg, d.off, n, d.rem())
		return nil
	}
	return d.take(int(n))
}

// count reads a u32 element count and checks that count elements of at
// least minSize bytes each fit in what is left, and that it is at most max,
// so a hostile count never sizes an allocation.
func (d *dec) count(field string, minSize, max int) int {
	n := d.u32()
	if d.err != nil {
		return 0
	}
	if uint64(n) > uint64(max) {
		d.fail("%s count %d exceeds %d", field, n, max)
		return 0
	}
	if uint64(n)*uint64(minSize) > uint64(d.rem()) {
		d.err = fmt.Errorf("%w: %w: %s at byte %d: %d %s need at least %d bytes, %d left",
			ErrMalformed, ErrTruncated, d.msg, d.off, n, field, uint64(n)*uint64(minSize), d.rem())
		return 0
	}
	return int(n)
}

// zero32 reads a reserved u32 that must be zero.
func (d *dec) zero32(field string) {
	if v := d.u32(); v != 0 && d.err == nil {
		d.fail("reserved %s is %d", field, v)
	}
}

// end checks that the body was consumed exactly.
func (d *dec) end() error {
	if d.err == nil && d.rem() != 0 {
		d.fail("%d trailing bytes", d.rem())
	}
	return d.err
}
