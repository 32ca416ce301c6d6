//go:build cuda

package tiers_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/flashmemory/flashmemory/internal/cuda"
	"github.com/flashmemory/flashmemory/tiers"
	"github.com/flashmemory/flashmemory/tiers/tiertest"
)

func cudaDevices(t testing.TB) []*cuda.Device {
	t.Helper()
	n, err := cuda.DeviceCount()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Skip("no CUDA device")
	}
	var ds []*cuda.Device
	for i := 0; i < n; i++ {
		d, err := cuda.Open(i)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		ds = append(ds, d)
	}
	return ds
}

// The GPU reserve passes the same conformance suite as the memfd one, on every device.
func TestCUDARegionSuite(t *testing.T) {
	for _, d := range cudaDevices(t) {
		t.Run(d.Name(), func(t *testing.T) {
			tiertest.Run(t, tiertest.Config{
				New: func(t testing.TB) tiers.Tier {
					r, err := tiers.NewRegion(tiers.RegionConfig{Session: 9, Layout: testLayout, Slots: 16, Backend: tiers.CUDABackend(d)})
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
		})
	}
}

// Sessions on every device at once: each region's pages land in its own device's memory,
// at the layer offsets the client is told, and the region exports an fd where VMM allows.
func TestCUDAReserveAcrossDevices(t *testing.T) {
	devs := cudaDevices(t)
	ctx := context.Background()
	for i, d := range devs {
		rs := tiers.NewReserve(tiers.ReserveConfig{Budget: 64 << 20, Backend: tiers.CUDABackend(d)})
		defer rs.Close()
		session := uint64(100 + i)
		r, err := rs.Create(session, testLayout, 8)
		if err != nil {
			t.Fatal(err)
		}
		if d.VMMSupported() && r.FD() < 0 {
			t.Errorf("device %d: VMM supported but region has no fd", i)
		}
		id := tiers.PageID{Session: session, Page: 3}
		page := tiertest.Page(testLayout.PageBytes(), id, 7)
		if err := rs.Put(ctx, id, 7, page); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(page))
		gen, err := rs.Get(ctx, id, got)
		if err != nil || gen != 7 || !bytes.Equal(got, page) {
			t.Fatalf("device %d: Get gen %d err %v equal %v", i, gen, err, bytes.Equal(got, page))
		}
		if r.Size() <= 0 {
			t.Errorf("device %d: region size %d", i, r.Size())
		}
	}
}
