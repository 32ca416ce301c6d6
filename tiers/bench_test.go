package tiers

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Page sizes benchmarked: DeepSeek-V4's 21 × 37,440 B and 1 MiB.
var benchPageSizes = []int{786240, 1 << 20}

// Sync granularities: every page durable on its own, or 16 / 64 pages per
// sync (the Store spills 16 and flushes 32 pages per commit by default).
var benchBatches = []int{1, 16, 64}

func benchSSD(b *testing.B, dir string) *SSD {
	s, err := OpenSSD(SSDConfig{Dir: dir, SyncWrites: true, GCInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkSSDWrite writes pages through the Badger tier with SyncWrites: a
// PutBatch of `batch` pages returns once they are fsynced.
func BenchmarkSSDWrite(b *testing.B) {
	for _, size := range benchPageSizes {
		for _, batch := range benchBatches {
			b.Run(fmt.Sprintf("page=%d/batch=%d", size, batch), func(b *testing.B) {
				s := benchSSD(b, b.TempDir())
				page := randBytes(rand.New(rand.NewPCG(1, 2)), size)
				ws := make([]PageWrite, batch)
				ctx := context.Background()
				b.SetBytes(int64(size * batch))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					for j := range ws {
						ws[j] = PageWrite{ID: PageID{Session: 1, Page: uint32(i*batch + j)}, Gen: 1, Page: page}
					}
					if err := s.PutBatch(ctx, ws); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkFileWrite is the baseline: the same bytes appended to a plain file
// on the same disk, fsynced after every `batch` pages.
func BenchmarkFileWrite(b *testing.B) {
	for _, size := range benchPageSizes {
		for _, batch := range benchBatches {
			b.Run(fmt.Sprintf("page=%d/batch=%d", size, batch), func(b *testing.B) {
				f, err := os.Create(filepath.Join(b.TempDir(), "pages"))
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				page := randBytes(rand.New(rand.NewPCG(1, 2)), size)
				b.SetBytes(int64(size * batch))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					for j := 0; j < batch; j++ {
						if _, err := f.Write(page); err != nil {
							b.Fatal(err)
						}
					}
					if err := f.Sync(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkSSDVsFileWrite runs both sides in the same iteration, interleaved,
// so that noise from other work on the machine hits both equally: each
// iteration writes one batch through the tier (PutBatch, SyncWrites) and the
// same bytes to a plain file (write ×batch, then fsync). It reports each
// side's MB/s and their ratio.
func BenchmarkSSDVsFileWrite(b *testing.B) {
	for _, size := range benchPageSizes {
		for _, batch := range benchBatches {
			b.Run(fmt.Sprintf("page=%d/batch=%d", size, batch), func(b *testing.B) {
				dir := b.TempDir()
				s := benchSSD(b, filepath.Join(dir, "badger"))
				f, err := os.Create(filepath.Join(dir, "pages"))
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				page := randBytes(rand.New(rand.NewPCG(1, 2)), size)
				ws := make([]PageWrite, batch)
				ctx := context.Background()
				var tierT, fileT time.Duration
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					for j := range ws {
						ws[j] = PageWrite{ID: PageID{Session: 1, Page: uint32(i*batch + j)}, Gen: 1, Page: page}
					}
					t0 := time.Now()
					if err := s.PutBatch(ctx, ws); err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					for j := 0; j < batch; j++ {
						if _, err := f.Write(page); err != nil {
							b.Fatal(err)
						}
					}
					if err := f.Sync(); err != nil {
						b.Fatal(err)
					}
					t2 := time.Now()
					tierT += t1.Sub(t0)
					fileT += t2.Sub(t1)
				}
				reportPair(b, int64(b.N)*int64(batch*size), tierT, fileT)
			})
		}
	}
}

// BenchmarkSSDVsFileRead does the same for random page reads from a 256-page
// set: Get through the tier (header and CRC32C verified) and pread of the same
// page from the plain file, interleaved.
func BenchmarkSSDVsFileRead(b *testing.B) {
	for _, size := range benchPageSizes {
		b.Run(fmt.Sprintf("page=%d", size), func(b *testing.B) {
			dir := b.TempDir()
			s := benchSSD(b, filepath.Join(dir, "badger"))
			f, err := os.Create(filepath.Join(dir, "pages"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			r := rand.New(rand.NewPCG(3, 4))
			page := randBytes(r, size)
			ctx := context.Background()
			ws := make([]PageWrite, benchReadPages)
			for i := range ws {
				ws[i] = PageWrite{ID: PageID{Session: 1, Page: uint32(i)}, Gen: 1, Page: page}
				if _, err := f.Write(page); err != nil {
					b.Fatal(err)
				}
			}
			if err := s.PutBatch(ctx, ws); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			dst := make([]byte, size)
			var tierT, fileT time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p := r.IntN(benchReadPages)
				t0 := time.Now()
				if _, err := s.Get(ctx, PageID{Session: 1, Page: uint32(p)}, dst); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if _, err := f.ReadAt(dst, int64(p)*int64(size)); err != nil {
					b.Fatal(err)
				}
				tierT += t1.Sub(t0)
				fileT += time.Since(t1)
			}
			reportPair(b, int64(b.N)*int64(size), tierT, fileT)
		})
	}
}

func reportPair(b *testing.B, bytes int64, tierT, fileT time.Duration) {
	if tierT <= 0 || fileT <= 0 {
		return
	}
	tier := float64(bytes) / tierT.Seconds() / 1e6
	file := float64(bytes) / fileT.Seconds() / 1e6
	b.ReportMetric(tier, "tier_MB/s")
	b.ReportMetric(file, "file_MB/s")
	b.ReportMetric(tier/file, "tier/file")
}

const benchReadPages = 256

// BenchmarkSSDRead reads random pages of a 256-page set through the tier
// (header and CRC32C verified, body copied out).
func BenchmarkSSDRead(b *testing.B) {
	for _, size := range benchPageSizes {
		b.Run(fmt.Sprintf("page=%d", size), func(b *testing.B) {
			s := benchSSD(b, b.TempDir())
			r := rand.New(rand.NewPCG(3, 4))
			page := randBytes(r, size)
			ctx := context.Background()
			ws := make([]PageWrite, benchReadPages)
			for i := range ws {
				ws[i] = PageWrite{ID: PageID{Session: 1, Page: uint32(i)}, Gen: 1, Page: page}
			}
			if err := s.PutBatch(ctx, ws); err != nil {
				b.Fatal(err)
			}
			dst := make([]byte, size)
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := s.Get(ctx, PageID{Session: 1, Page: uint32(r.IntN(benchReadPages))}, dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFileRead is the baseline: pread of random pages of the same set
// from a plain file.
func BenchmarkFileRead(b *testing.B) {
	for _, size := range benchPageSizes {
		b.Run(fmt.Sprintf("page=%d", size), func(b *testing.B) {
			f, err := os.Create(filepath.Join(b.TempDir(), "pages"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			r := rand.New(rand.NewPCG(3, 4))
			page := randBytes(r, size)
			for i := 0; i < benchReadPages; i++ {
				if _, err := f.Write(page); err != nil {
					b.Fatal(err)
				}
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			dst := make([]byte, size)
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := f.ReadAt(dst, int64(r.IntN(benchReadPages))*int64(size)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMirrorAppend appends DeepSeek-V4 chunks (21 layers × [576, 8] B)
// into mirror pages with WriteChunk: 42 scattered segment copies per chunk.
func BenchmarkMirrorAppend(b *testing.B) {
	g, err := NewGeometry(dsLayout())
	if err != nil {
		b.Fatal(err)
	}
	m := NewHostMirror(MirrorConfig{})
	defer m.Close()
	chunk := randBytes(rand.New(rand.NewPCG(5, 6)), g.ChunkBytes())
	const pages = 256 // 200 MB of mirror, beyond the caches like a real session
	cpp := uint64(g.Layout().ChunksPerPage)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n := uint64(i) % (pages * cpp)
		id := PageID{Session: 1, Page: uint32(n / cpp)}
		if _, err := m.WriteChunk(id, uint64(i)+1, g, int(n%cpp), chunk); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMemcpyAppend is the baseline: the same chunk bytes copied
// contiguously into a buffer of the same total size.
func BenchmarkMemcpyAppend(b *testing.B) {
	g, _ := NewGeometry(dsLayout())
	chunk := randBytes(rand.New(rand.NewPCG(5, 6)), g.ChunkBytes())
	const pages = 256
	cpp := g.Layout().ChunksPerPage
	buf := make([]byte, pages*g.PageBytes())
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n := i % (pages * cpp)
		copy(buf[n*len(chunk):], chunk)
	}
}

// BenchmarkRecallCopy copies a page from the mirror into a reserve region
// (21 row copies into the layer buffers), as the mover does per recalled page.
func BenchmarkRecallCopy(b *testing.B) {
	l := dsLayout()
	reg, err := NewRegion(RegionConfig{Session: 1, Layout: l, Slots: 128})
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	page := randBytes(rand.New(rand.NewPCG(7, 8)), l.PageBytes())
	for s := 0; s < 128; s++ {
		if _, err := reg.Allocate(uint32(s)); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(page)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := i % 128
		if err := reg.WritePage(s, uint32(s), uint64(i)+1, page); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMirrorAppendRun appends APPENDs of 256 DeepSeek-V4 chunks (3 MiB,
// four pages) in the protocol's layer-major order with WriteChunkRun: one copy
// per layer segment per page. Compare with BenchmarkMemcpyAppend (same bytes
// per chunk, contiguous).
func BenchmarkMirrorAppendRun(b *testing.B) {
	l := dsLayout()
	g, err := NewGeometry(l)
	if err != nil {
		b.Fatal(err)
	}
	m := NewHostMirror(MirrorConfig{})
	defer m.Close()
	const n = 256
	payload := randBytes(rand.New(rand.NewPCG(5, 6)), n*g.ChunkBytes())
	const pages = 256
	cpp := l.ChunksPerPage
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		base := (i * n / cpp) % pages
		for k := 0; k < n/cpp; k++ {
			run := ChunkRun{Payload: payload, N: n, From: k * cpp, Count: cpp}
			if _, err := m.WriteChunkRun(PageID{Session: 1, Page: uint32((base + k) % pages)}, uint64(i)+1, g, run); err != nil {
				b.Fatal(err)
			}
		}
	}
}
