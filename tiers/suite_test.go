package tiers_test

import (
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/tiers"
	"github.com/flashmemory/flashmemory/tiers/tiertest"
)

// testLayout is small but has everything the real one has: several layers of
// different row sizes, two segments per chunk and padded rows.
var testLayout = tiers.Layout{
	ChunksPerPage: 4,
	Layers: []tiers.LayerLayout{
		{RowBytes: 4*72 + 12, Segments: []int{64, 8}},
		{RowBytes: 4 * 72, Segments: []int{64, 8}},
		{RowBytes: 4*132 + 100, Segments: []int{132}},
	},
}

func TestRegionSuite(t *testing.T) {
	tiertest.Run(t, tiertest.Config{
		New: func(t testing.TB) tiers.Tier {
			r, err := tiers.NewRegion(tiers.RegionConfig{Session: 9, Layout: testLayout, Slots: 16})
			if err != nil {
				t.Fatal(err)
			}
			return r
		},
		PageBytes:     testLayout.PageBytes(),
		Sessions:      []uint64{9},
		Capacity:      16,
		FixedPageSize: true,
	})
}

func TestReserveSuite(t *testing.T) {
	tiertest.Run(t, tiertest.Config{
		New: func(t testing.TB) tiers.Tier {
			rs := tiers.NewReserve(tiers.ReserveConfig{Budget: 1 << 20})
			for _, s := range []uint64{1, 2} {
				if _, err := rs.Create(s, testLayout, 12); err != nil {
					t.Fatal(err)
				}
			}
			return rs
		},
		PageBytes:     testLayout.PageBytes(),
		Sessions:      []uint64{1, 2},
		Capacity:      12,
		FixedPageSize: true,
	})
}

func TestMirrorSuite(t *testing.T) {
	for _, pageBytes := range []int{testLayout.PageBytes(), 8192, 70000} {
		tiertest.Run(t, tiertest.Config{
			New: func(t testing.TB) tiers.Tier {
				return tiers.NewHostMirror(tiers.MirrorConfig{ExtentBytes: 1 << 20})
			},
			PageBytes: pageBytes,
			Sessions:  []uint64{1, 2, 1 << 63},
		})
	}
}

func openSSD(t testing.TB, dir string) *tiers.SSD {
	t.Helper()
	s, err := tiers.OpenSSD(tiers.SSDConfig{Dir: dir, GCInterval: 50 * time.Millisecond, ValueLogFileSize: 64 << 20, MemTableSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSSDSuite(t *testing.T) {
	dirs := map[tiers.Tier]string{}
	tiertest.Run(t, tiertest.Config{
		New: func(t testing.TB) tiers.Tier {
			dir := t.TempDir()
			s := openSSD(t, dir)
			dirs[s] = dir
			return s
		},
		Reopen: func(t testing.TB, old tiers.Tier) tiers.Tier {
			if err := old.Close(); err != nil {
				t.Fatal(err)
			}
			s := openSSD(t, dirs[old])
			dirs[s] = dirs[old]
			return s
		},
		PageBytes: 9000,
		Sessions:  []uint64{1, 2, ^uint64(0)},
	})
}

func TestStoreSuite(t *testing.T) {
	// Budget of 5 pages: the suite's sessions do not fit, so it runs across
	// spills and bring-backs.
	const pageBytes = 8192
	tiertest.Run(t, tiertest.Config{
		New: func(t testing.TB) tiers.Tier {
			s, err := tiers.OpenStore(tiers.StoreConfig{
				Mirror: tiers.MirrorConfig{Budget: 5 * pageBytes, ExtentBytes: 2 * pageBytes},
				SSD:    tiers.SSDConfig{Dir: t.TempDir(), ValueLogFileSize: 64 << 20, MemTableSize: 8 << 20},
			})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		PageBytes: pageBytes,
		Sessions:  []uint64{1, 2},
	})
}
