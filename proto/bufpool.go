package proto

import "sync"

// Outgoing frames are built in pooled buffers: a CYCLE of a batch of 8
// carries ~200 KB of hidden states, and allocating (and zeroing, and
// collecting) that per cycle costs more than the socket round trip.

// maxPooled is the largest buffer kept for reuse; bigger ones (bulk inline
// APPENDs) go to the garbage collector.
const maxPooled = 4 << 20

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// getBuf returns a buffer of length HeaderSize with room for at least size
// more bytes.
func getBuf(size int) *[]byte {
	p := bufPool.Get().(*[]byte)
	if cap(*p) < HeaderSize+size {
		*p = make([]byte, 0, HeaderSize+size)
	}
	*p = (*p)[:HeaderSize]
	return p
}

func putBuf(p *[]byte) {
	if cap(*p) <= maxPooled {
		bufPool.Put(p)
	}
}

// sizer is implemented by messages that can say how long their encoding
// is, so the buffer is allocated once.
type sizer interface{ encodedSize() int }

func sizeHint(m Message) int {
	if s, ok := m.(sizer); ok {
		return s.encodedSize()
	}
	return 256
}

// encodeFrame encodes m behind the header space of a pooled buffer. The
// caller writes the header and returns the buffer with putBuf.
func encodeFrame(m Message) (*[]byte, error) {
	p := getBuf(sizeHint(m))
	b, err := m.AppendBinary(*p)
	if err != nil {
		putBuf(p)
		return nil, err
	}
	*p = b
	return p, nil
}

func (m *Ping) encodedSize() int    { return len(m.Data) }
func (m *Commit) encodedSize() int  { return 28 + len(m.Keys) }
func (m *Release) encodedSize() int { return 4 + 8*len(m.Leases) }

func (m *Append) encodedSize() int {
	return 44 + len(m.Keys) + len(m.Payload)
}

func (m *Cycle) encodedSize() int {
	n := 4
	for i := range m.Entries {
		n += 28
		for _, q := range m.Entries[i].Queries {
			n += 4 + len(q)
		}
	}
	return n
}

func (m *CycleReply) encodedSize() int {
	n := 4
	for i := range m.Results {
		r := &m.Results[i]
		if r.Err != nil {
			n += 6 + len(r.Err.Msg)
			continue
		}
		n += 4 + 72 + 8 + 8*(len(r.Pages)+len(r.Tail))
		if len(r.Damaged) > 0 {
			n += 4
			for _, d := range r.Damaged {
				n += 4 + 6
				if d.Err != nil {
					n += len(clipMsg(d.Err.Msg))
				}
			}
		}
	}
	return n
}
