package gpuinfo

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func TestReserveBytes(t *testing.T) {
	const gib, mib = 1 << 30, 1 << 20
	tests := []struct {
		name                  string
		free                  uint64
		frac                  float64
		headroom, granularity uint64
		want                  uint64
		err                   error
	}{
		{"80 GiB card, 80% after 4 GiB", 80 * gib, 0.8, 4 * gib, 2 * mib, 62258 * mib, nil},
		{"rounds down to granularity", 10*mib + 123, 1, 0, 2 * mib, 10 * mib, nil},
		{"headroom exceeds free", 3 * gib, 0.5, 4 * gib, 2 * mib, 0, nil},
		{"all of it", 8 * gib, 1, 0, 2 * mib, 8 * gib, nil},
		{"zero fraction", gib, 0, 0, 2 * mib, 0, ErrConfig},
		{"fraction above one", gib, 1.5, 0, 2 * mib, 0, ErrConfig},
		{"NaN fraction", gib, nan(), 0, 2 * mib, 0, ErrConfig},
		{"zero granularity", gib, 0.5, 0, 0, 0, ErrConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReserveBytes(tc.free, tc.frac, tc.headroom, tc.granularity)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if got != tc.want {
				t.Errorf("got %d, want %d", got, tc.want)
			}
			if tc.granularity > 0 && got%tc.granularity != 0 {
				t.Errorf("%d not a multiple of %d", got, tc.granularity)
			}
		})
	}
}

func nan() float64 { return math.NaN() }

func TestThrottleNames(t *testing.T) {
	tests := []struct {
		mask uint64
		want string
		hw   bool
	}{
		{0, "", false},
		{nvml.ClocksEventReasonGpuIdle, "idle", false},
		{nvml.ClocksEventReasonSwPowerCap | nvml.ClocksThrottleReasonHwThermalSlowdown, "sw-power-cap,hw-thermal", true},
		{nvml.ClocksThrottleReasonHwPowerBrakeSlowdown, "hw-power-brake", true},
		{1 << 40, "other(0x10000000000)", false},
	}
	for _, tc := range tests {
		if got := strings.Join(ThrottleNames(tc.mask), ","); got != tc.want {
			t.Errorf("ThrottleNames(%#x) = %q, want %q", tc.mask, got, tc.want)
		}
		if got := HardwareThrottled(tc.mask); got != tc.hw {
			t.Errorf("HardwareThrottled(%#x) = %v, want %v", tc.mask, got, tc.hw)
		}
	}
}

func TestJudge(t *testing.T) {
	tests := []struct {
		name    string
		in      Info
		base    uint64
		xids    []uint64
		healthy bool
		why     string
	}{
		{"clean", Info{ECCSupported: true, ECCUncorrected: 2}, 2, nil, true, ""},
		{"new ECC", Info{ECCSupported: true, ECCUncorrected: 5}, 2, nil, false, "3 new uncorrected ECC errors"},
		{"ECC not reported", Info{ECCUncorrected: 9}, 0, nil, true, ""},
		{"application Xid only", Info{}, 0, []uint64{13, 43}, true, ""},
		{"critical Xid", Info{}, 0, []uint64{13, 79}, false, "Xid 79"},
		{"both", Info{ECCSupported: true, ECCUncorrected: 1}, 0, []uint64{48}, false, "1 new uncorrected ECC errors; Xid 48"},
	}
	for _, tc := range tests {
		ok, why := judge(tc.in, tc.base, tc.xids)
		if ok != tc.healthy || why != tc.why {
			t.Errorf("%s: got (%v, %q), want (%v, %q)", tc.name, ok, why, tc.healthy, tc.why)
		}
	}
}

// On a machine without the driver (CI, the build machine) Open must say "no GPU" in one
// log line and return ErrNoGPU; on a GPU machine it must read every device sensibly.
func TestOpen(t *testing.T) {
	var logs bytes.Buffer
	m, err := Open(slog.New(slog.NewTextHandler(&logs, nil)))
	if errors.Is(err, ErrNoGPU) {
		if os.Getenv("FLASHMEM_EXPECT_GPU") == "1" {
			t.Fatalf("no GPU found where one is expected: %v", err)
		}
		lines := strings.Count(logs.String(), "\n")
		if lines != 1 || !strings.Contains(logs.String(), "no GPU") {
			t.Fatalf("want one 'no GPU' log line, got %d: %q", lines, logs.String())
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	infos, err := m.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range infos {
		t.Logf("GPU %d: %s %s, memory %d/%d MiB free, util %d%%/%d%%, ECC supported %v uncorrected %d, throttle %v",
			in.Index, in.Name, in.UUID, in.MemFree>>20, in.MemTotal>>20, in.UtilGPU, in.UtilMem,
			in.ECCSupported, in.ECCUncorrected, ThrottleNames(in.Throttle))
		if in.Name == "" || !strings.HasPrefix(in.UUID, "GPU-") || in.MemTotal == 0 || in.MemFree > in.MemTotal {
			t.Errorf("implausible device %+v", in)
		}
		if ok, why := m.Healthy(in.Index); !ok {
			t.Errorf("device %d unhealthy at start: %s", in.Index, why)
		}
		n, err := ReserveBytes(in.MemFree, 0.5, 1<<30, 2<<20)
		if err != nil || n == 0 || n > in.MemFree {
			t.Errorf("reserve %d, %v from %d free", n, err, in.MemFree)
		}
	}
	if _, why := m.Healthy(len(infos)); !strings.Contains(why, "no such device") {
		t.Errorf("Healthy out of range: %q", why)
	}
	// Xid watching must start, run and stop cleanly (no Xid is expected on a good card).
	ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
	defer cancel()
	if err := m.WatchXid(ctx); err != nil {
		t.Logf("Xid events: %v", err) // not every virtualised GPU delivers them
	}
	for i := range infos {
		if x := m.Xids(i); len(x) != 0 {
			t.Logf("device %d Xids during test: %v", i, x)
		}
	}
}
