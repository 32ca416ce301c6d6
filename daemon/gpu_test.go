package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/flashmemory/flashmemory/internal/cuda"
	"github.com/flashmemory/flashmemory/internal/gpuinfo"
	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// syncBuffer is a log sink the daemon's goroutines may write concurrently.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(substr string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range strings.Split(s.b.String(), "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return out
}

func startLogged(t *testing.T, cfg Config, opts ...Option) (*running, *syncBuffer) {
	t.Helper()
	buf := &syncBuffer{}
	var w io.Writer = buf
	d, err := New(cfg, append([]Option{WithLogger(slog.New(slog.NewTextHandler(w, nil)))}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{d: d, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- d.Run(ctx) }()
	return r, buf
}

// fakeNVML stands in for the host's NVML on this GPU-less machine: the
// daemon's GPU logic (one log line, host-memory reserves, metrics, health)
// is what is under test, the NVML reading itself is gpuinfo's.
type fakeNVML struct {
	mu     sync.Mutex
	infos  []gpuinfo.Info
	sick   map[int]string
	xids   map[int][]uint64
	closed bool
}

func newFakeNVML(n int) *fakeNVML {
	f := &fakeNVML{sick: map[int]string{}, xids: map[int][]uint64{}}
	for i := range n {
		f.infos = append(f.infos, gpuinfo.Info{Index: i, Name: "NVIDIA Test", UUID: "GPU-" + string(rune('a'+i)),
			MemTotal: 80 << 30, MemFree: 70 << 30, MemUsed: 10 << 30, UtilGPU: 42, UtilMem: 7,
			ECCSupported: true, Throttle: 0x4 /* sw power cap */})
	}
	return f
}

func (f *fakeNVML) Count() int { return len(f.infos) }
func (f *fakeNVML) Snapshot() ([]gpuinfo.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]gpuinfo.Info(nil), f.infos...), nil
}
func (f *fakeNVML) Healthy(i int) (bool, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	why, bad := f.sick[i]
	return !bad, why
}
func (f *fakeNVML) Xids(i int) []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint64(nil), f.xids[i]...)
}
func (f *fakeNVML) WatchXid(ctx context.Context) error { <-ctx.Done(); return nil }
func (f *fakeNVML) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}
func (f *fakeNVML) setSick(i int, why string, xid uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if why == "" {
		delete(f.sick, i)
		return
	}
	f.sick[i] = why
	f.xids[i] = append(f.xids[i], xid)
}

// On this machine NVML is absent: the daemon starts, says so in exactly one
// line, and serves host-memory reserves whatever device a session names.
func TestGPUNoDriver(t *testing.T) {
	if m, err := gpuinfo.Open(slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		m.Close()
		t.Skip("NVML present: this test is for hosts without a driver")
	}
	cfg := testConfig(t, t.TempDir())
	cfg.GPU.Mode = GPUAuto
	rd, logs := startLogged(t, cfg)
	defer rd.shutdown(t)
	if got := logs.lines("no GPU"); len(got) != 1 {
		t.Fatalf("%d \"no GPU\" log lines, want 1: %q", len(got), got)
	}
	if got := logs.lines("subsystem=gpu"); len(got) != 1 {
		t.Fatalf("%d log lines from the GPU subsystem, want 1: %q", len(got), got)
	}
	c := dial(t, cfg.Socket)
	l := testLayout(8)
	for _, dev := range []uint32{0, 3, proto.DeviceAny, proto.DeviceHostOnly} {
		op, err := c.Open(context.Background(), &proto.Open{Device: dev, Layout: l})
		if err != nil {
			t.Fatalf("device %#x: %v", dev, err)
		}
		if op.Region.Kind != proto.RegionMemfd || op.Region.Device != proto.NoDevice {
			t.Fatalf("device %#x: region %v on %#x, want memfd on NoDevice", dev, op.Region.Kind, op.Region.Device)
		}
		mem, err := op.Region.Map()
		if err != nil {
			t.Fatalf("device %#x: Map: %v", dev, err)
		}
		proto.Unmap(mem)
		op.Region.Close()
	}
	if err := rd.d.healthy(); err != nil {
		t.Fatalf("healthy without GPUs: %v", err)
	}
}

// NVML finds GPUs but the binary has no CUDA: one line says how to build the
// CUDA daemon, sessions get host memory (and can map it and read appended
// pages back), NVML's numbers are exported, and an unhealthy GPU turns
// /healthz to 503 until it recovers.
func TestGPUWithoutCUDABuild(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.GPU.Mode = GPUAuto
	cfg.Metrics = "unix:" + filepath.Join(dir, "metrics.sock")
	nv := newFakeNVML(2)
	rd, logs := startLogged(t, cfg, withGPUHooks(gpuHooks{
		openMonitor: func(*slog.Logger) (gpuMonitor, error) { return nv, nil },
	}))
	if got := logs.lines("built without CUDA"); len(got) != 1 || !strings.Contains(got[0], "scripts/build-cuda.sh") || !strings.Contains(got[0], "gpus=2") {
		t.Fatalf("log lines %q, want one naming scripts/build-cuda.sh and 2 GPUs", got)
	}

	c := dial(t, cfg.Socket)
	ctx := context.Background()
	l := testLayout(96)
	op, err := c.Open(ctx, &proto.Open{Device: 1, Layout: l, Policy: proto.Policy{KMax: 16}})
	if err != nil {
		t.Fatal(err)
	}
	if op.Region.Kind != proto.RegionMemfd || op.Region.Device != proto.NoDevice {
		t.Fatalf("region %v on %#x, want memfd on NoDevice", op.Region.Kind, op.Region.Device)
	}
	mem, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	r := rand.New(rand.NewPCG(3, 4))
	const seed, chunks = 17, 4096
	appendAll(t, c, op.Session, &l, seed, 0, chunks, r)
	res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: chunks * 4, Queries: queries(r, 64, 3)}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("cycle: %v %v", err, res[0].Err)
	}
	checkPages(t, &l, &op.Region.RegionDesc, mem, seed, chunks, res[0].Pages)

	mf := gather(t, rd.d)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"flashmem_gpu_nvml_up", nil, 1},
		{"flashmem_gpu_memory_total_bytes", map[string]string{"gpu": "1", "uuid": "GPU-b"}, 80 << 30},
		{"flashmem_gpu_memory_free_bytes", map[string]string{"gpu": "0"}, 70 << 30},
		{"flashmem_gpu_memory_used_bytes", map[string]string{"gpu": "0"}, 10 << 30},
		{"flashmem_gpu_utilization_percent", map[string]string{"gpu": "1"}, 42},
		{"flashmem_gpu_memory_utilization_percent", map[string]string{"gpu": "1"}, 7},
		{"flashmem_gpu_ecc_uncorrected_errors", map[string]string{"gpu": "1"}, 0},
		{"flashmem_gpu_throttle_reasons", map[string]string{"gpu": "0"}, 4},
		{"flashmem_gpu_hw_throttled", map[string]string{"gpu": "0"}, 0},
		{"flashmem_gpu_healthy", map[string]string{"gpu": "1"}, 1},
		{"flashmem_gpu_xid_events", map[string]string{"gpu": "1"}, 0},
	} {
		if got, ok := metricValue(mf, tc.name, tc.labels); !ok || got != tc.want {
			t.Errorf("%s%v = %v (found %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	if got, ok := metricValue(mf, "flashmem_tier_bytes", map[string]string{"tier": "reserve"}); !ok || got == 0 {
		t.Errorf("reserve tier bytes %v (found %v) after a cycle", got, ok)
	}

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", strings.TrimPrefix(cfg.Metrics, "unix:"))
	}}}
	healthz := func() int {
		resp, err := hc.Get("http://flashmemd/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := healthz(); code != http.StatusOK {
		t.Fatalf("healthz %d with healthy GPUs", code)
	}
	nv.setSick(1, "Xid 79", 79)
	err = rd.d.healthy()
	if !errors.Is(err, ErrGPUUnhealthy) || !strings.Contains(err.Error(), "gpu 1: Xid 79") {
		t.Fatalf("healthy() = %v, want ErrGPUUnhealthy naming gpu 1", err)
	}
	if code := healthz(); code != http.StatusServiceUnavailable {
		t.Fatalf("healthz %d with an unhealthy GPU, want 503", code)
	}
	mf = gather(t, rd.d)
	if v, _ := metricValue(mf, "flashmem_gpu_healthy", map[string]string{"gpu": "1"}); v != 0 {
		t.Errorf("flashmem_gpu_healthy{gpu=1} = %v while sick", v)
	}
	if v, _ := metricValue(mf, "flashmem_gpu_xid_events", map[string]string{"gpu": "1"}); v != 1 {
		t.Errorf("flashmem_gpu_xid_events{gpu=1} = %v, want 1", v)
	}
	nv.setSick(1, "", 0)
	if code := healthz(); code != http.StatusOK {
		t.Fatalf("healthz %d after recovery", code)
	}
	c.Close()
	rd.shutdown(t)
	if !nv.closed {
		t.Fatal("NVML monitor not closed by Close")
	}
}

func gather(t *testing.T, d *Daemon) []*dto.MetricFamily {
	t.Helper()
	mf, err := d.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mf
}

// metricValue finds the gauge or counter of name whose labels include want.
func metricValue(mf []*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	for _, f := range mf {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			if m.Gauge != nil {
				return m.GetGauge().GetValue(), true
			}
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// Placement on a GPU host, with the GPU reserves' memory swapped for memfds
// (this machine has no GPU; the CUDA backend itself is tested in tiers and
// internal/cuda on the GPU machine): a named device, the device with the
// most budget left for DeviceAny, host memory for DeviceHostOnly, and clear
// errors for devices that cannot serve.
func TestGPUPlacement(t *testing.T) {
	l := testLayout(8) // regions of 2 × 8 rows, 4 KiB-aligned
	size, err := tiers.RegionSize(tiersLayout(l), 8)
	if err != nil {
		t.Fatal(err)
	}
	host := tiers.NewReserve(tiers.ReserveConfig{})
	mk := func(ord int, budget int64, exportable bool) *gpuDevice {
		gd := &gpuDevice{ordinal: ord, name: "test", budget: budget, exportable: exportable}
		if budget > 0 {
			gd.reserve = tiers.NewReserve(tiers.ReserveConfig{Budget: budget})
		}
		return gd
	}
	g := &gpuSubsystem{host: host, devs: []*gpuDevice{
		mk(0, 2*size, true),  // room for two sessions
		mk(1, 3*size, true),  // room for three: DeviceAny's first choice
		mk(2, 8*size, false), // legacy IPC only
		mk(3, 0, true),       // no budget
	}}
	defer func() {
		for _, gd := range g.devs {
			if gd.reserve != nil {
				gd.reserve.Close()
			}
		}
		host.Close()
	}()
	d := &Daemon{gpu: g, reserve: host}
	var nextID uint64
	tests := []struct {
		name       string
		want       reserveWant
		wantKind   proto.RegionKind
		wantDevice uint32
		wantCode   proto.Code
	}{
		{"any picks most left", wantDevice(proto.DeviceAny), proto.RegionCUDA, 1, 0},
		{"named device", wantDevice(0), proto.RegionCUDA, 0, 0},
		{"any again: device 1 has 2 left, device 0 one", wantDevice(proto.DeviceAny), proto.RegionCUDA, 1, 0},
		{"resumed from SSD (daemon's choice), tied at 1 left: lowest ordinal", reserveWant{}, proto.RegionCUDA, 0, 0},
		{"named device full", wantDevice(0), 0, 0, proto.CodeLimitExceeded},
		{"any with one left", wantDevice(proto.DeviceAny), proto.RegionCUDA, 1, 0},
		{"any, all full", wantDevice(proto.DeviceAny), 0, 0, proto.CodeLimitExceeded},
		{"host memory asked", wantDevice(proto.DeviceHostOnly), proto.RegionMemfd, proto.NoDevice, 0},
		{"legacy IPC device", wantDevice(2), 0, 0, proto.CodeBadRequest},
		{"device without budget", wantDevice(3), 0, 0, proto.CodeLimitExceeded},
		{"no such device", wantDevice(4), 0, 0, proto.CodeBadRequest},
	}
	for _, tt := range tests {
		nextID++
		s := &session{id: nextID, layout: l, want: tt.want}
		err := d.createRegion(s)
		if tt.wantCode != 0 {
			if proto.CodeOf(err) != tt.wantCode {
				t.Errorf("%s: err %v, want code %v", tt.name, err, tt.wantCode)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		desc := regionDesc(s.region)
		if desc.Kind != tt.wantKind || desc.Device != tt.wantDevice {
			t.Errorf("%s: region %v on %#x, want %v on %#x", tt.name, desc.Kind, desc.Device, tt.wantKind, tt.wantDevice)
		}
		if _, err := (&proto.OpenReply{Session: s.id, Region: proto.Region{RegionDesc: desc}}).AppendBinary(nil); err != nil {
			t.Errorf("%s: descriptor does not encode: %v", tt.name, err)
		}
	}
	// Destroying a session's region returns its budget to the right device.
	used := g.devs[1].reserve.Used()
	s := &session{id: 1000, layout: l, want: wantDevice(1)}
	g.devs[1].reserve = tiers.NewReserve(tiers.ReserveConfig{Budget: 4 * size}) // fresh device 1 with room
	if err := d.createRegion(s); err != nil {
		t.Fatal(err)
	}
	s.destroyRegion(d)
	if g.devs[1].reserve.Used() != 0 || s.region != nil {
		t.Fatalf("device 1 still holds %d B after destroyRegion (had %d before the swap)", g.devs[1].reserve.Used(), used)
	}
}

// On a GPU host with the cuda-tagged build (scripts/build-cuda.sh, then
// .gpu/daemon.test -test.run GPUReserveOnDevice on the GPU machine): the
// reserve is GPU memory the client imports from the fd, and the pages a
// cycle hands out hold on the GPU exactly the bytes that were appended.
// Skipped wherever CUDA is not available, i.e. on every default build.
func TestGPUReserveOnDevice(t *testing.T) {
	n, err := cuda.DeviceCount()
	if err != nil || n == 0 {
		t.Skipf("no CUDA device (%v)", err)
	}
	cfg := testConfig(t, t.TempDir())
	cfg.GPU.Mode = GPUAuto
	rd, logs := startLogged(t, cfg)
	defer rd.shutdown(t)
	// The mirror the recalls below copy from is pinned (the direct DMA path).
	if len(logs.lines("host mirror pinned")) == 0 {
		t.Error("no pinned host mirror on a GPU host")
	}
	c := dial(t, cfg.Socket)
	ctx := context.Background()
	for dev := range n {
		l := testLayout(96)
		op, err := c.Open(ctx, &proto.Open{Device: uint32(dev), Layout: l, Policy: proto.Policy{KMax: 16}})
		if err != nil {
			t.Fatalf("device %d: %v", dev, err)
		}
		if op.Region.Kind != proto.RegionCUDA || op.Region.Device != uint32(dev) {
			t.Fatalf("device %d: region %v on %d", dev, op.Region.Kind, op.Region.Device)
		}
		if _, err := op.Region.Map(); !errors.Is(err, proto.ErrDeviceRegion) {
			t.Fatalf("Map of a CUDA region: %v", err)
		}
		d, err := cuda.Open(dev)
		if err != nil {
			t.Fatal(err)
		}
		imp, err := d.ImportFD(int(op.Region.File.Fd()), int(op.Region.Size))
		if err != nil {
			d.Close()
			t.Fatalf("device %d: import: %v", dev, err)
		}
		r := rand.New(rand.NewPCG(uint64(dev), 9))
		const seed, chunks = 23, 4096
		appendAll(t, c, op.Session, &l, seed, 0, chunks, r)
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: chunks * 4, Queries: queries(r, 64, 3)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("cycle: %v %v", err, res[0].Err)
		}
		mem := make([]byte, op.Region.Size)
		if err := d.CopyDtoH(mem, imp.Ptr()); err != nil {
			t.Fatal(err)
		}
		checkPages(t, &l, &op.Region.RegionDesc, mem, seed, chunks, res[0].Pages)
		imp.Close()
		d.Close()
		op.Region.Close()
		if err := c.CloseSession(ctx, op.Session, true); err != nil {
			t.Fatal(err)
		}
	}
	// A second process (PyTorch with cuda-python, as a decoder would) imports
	// a reserve through the daemon: scripts/gpu-test.sh sets FLASHMEM_TORCH_TEST.
	if os.Getenv("FLASHMEM_TORCH_TEST") == "" {
		return
	}
	for dev := range n {
		out, err := exec.Command("python3", "-B", filepath.Join("..", "scripts", "torch_client_example.py"),
			"--socket", cfg.Socket, "--device", strconv.Itoa(dev)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), fmt.Sprintf("CUDA reserve of 2097152 bytes on device %d", dev)) {
			t.Fatalf("torch example on device %d: %v\n%s", dev, err, out)
		}
	}
}

// mode = "off" never touches NVML and says so once.
func TestGPUModeOff(t *testing.T) {
	cfg := testConfig(t, t.TempDir())
	cfg.GPU.Mode = GPUOff
	rd, logs := startLogged(t, cfg, withGPUHooks(gpuHooks{
		openMonitor: func(*slog.Logger) (gpuMonitor, error) {
			t.Error("NVML opened with [gpu] mode = \"off\"")
			return nil, gpuinfo.ErrNoGPU
		},
		cuda: true,
	}))
	defer rd.shutdown(t)
	if got := logs.lines("subsystem=gpu"); len(got) != 1 || !strings.Contains(got[0], "GPU support off") {
		t.Fatalf("GPU log lines %q, want one saying GPU support is off", got)
	}
	c := dial(t, cfg.Socket)
	op, err := c.Open(context.Background(), &proto.Open{Device: 0, Layout: testLayout(4)})
	if err != nil {
		t.Fatal(err)
	}
	defer op.Region.Close()
	if op.Region.Kind != proto.RegionMemfd {
		t.Fatalf("region kind %v with GPUs off", op.Region.Kind)
	}
}

// scripts/torch_client_example.py reads kind and device from a real OPEN
// reply; against a daemon without CUDA devices it maps the host-memory
// reserve with mmap (torch and cuda-python are only needed for GPU memory).
func TestTorchExampleHostMemory(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	script := filepath.Join("..", "scripts", "torch_client_example.py")
	cfg := testConfig(t, t.TempDir())
	cfg.GPU.Mode = GPUOff
	rd := start(t, cfg)
	defer rd.shutdown(t)
	for _, dev := range []string{"0", "0xFFFFFFFF", "0xFFFFFFFE"} {
		out, err := exec.Command(py, "-B", script, "--socket", cfg.Socket, "--device", dev).CombinedOutput()
		if err != nil {
			t.Fatalf("device %s: %v\n%s", dev, err, out)
		}
		got := string(out)
		for _, want := range []string{"host-memory reserve (memfd)", "layer 0: (8, 37440) at offset 0, first row sum 0", "layer 1: (8, 37440) at offset 303104"} {
			if !strings.Contains(got, want) {
				t.Fatalf("device %s: output lacks %q:\n%s", dev, want, got)
			}
		}
	}
}

// With [gpu] scorer = "auto" the LSA model scores on the GPU, and a session cycling
// through the daemon gets the page tables a CPU-scoring daemon gives for the same keys
// and queries (up to ties at the selection threshold).
func TestGPUScorerInDaemon(t *testing.T) {
	n, err := cuda.DeviceCount()
	if err != nil || n == 0 {
		t.Skipf("no CUDA device (%v)", err)
	}
	const chunks, cycles = 16384, 4
	run := func(scorer string) ([][]uint32, uint64) {
		cfg := testConfig(t, t.TempDir())
		cfg.GPU.Mode = GPUAuto
		cfg.GPU.Scorer = scorer
		cfg.Indexer.Random[0].Heads = 16 // the kernel wants a multiple of 8
		rd, logs := startLogged(t, cfg)
		defer rd.shutdown(t)
		onGPU := len(logs.lines("Memory Indexer model scores on the GPU")) > 0
		if onGPU != (scorer == GPUAuto) {
			t.Fatalf("scorer %q: GPU scoring log line present: %v", scorer, onGPU)
		}
		c := dial(t, cfg.Socket)
		ctx := context.Background()
		l := testLayout(160)
		op, err := c.Open(ctx, &proto.Open{Device: proto.DeviceAny, Layout: l, Policy: proto.Policy{KMax: 32}})
		if err != nil {
			t.Fatal(err)
		}
		defer op.Region.Close()
		r := rand.New(rand.NewPCG(5, 5))
		appendAll(t, c, op.Session, &l, 31, 0, chunks, r)
		var tables [][]uint32
		var lease uint64
		for k := range cycles {
			res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Step: uint64(64 * k), Position: chunks*4 + uint64(k), Queries: queries(r, 64, 3)}})
			if err != nil || res[0].Err != nil {
				t.Fatalf("cycle %d: %v %v", k, err, res[0].Err)
			}
			var pages []uint32
			for _, p := range res[0].Pages {
				pages = append(pages, p.Page)
			}
			tables = append(tables, pages)
			if lease != 0 {
				if err := c.Release(ctx, lease); err != nil {
					t.Fatal(err)
				}
			}
			lease = res[0].Lease
		}
		var gpuBatches uint64
		for _, ns := range rd.d.gpu.scorers {
			gb, cb, lastErr := ns.s.Stats()
			if cb != 0 {
				t.Errorf("model %s: %d batches fell back to the CPU (last error %v)", ns.name, cb, lastErr)
			}
			gpuBatches += gb
		}
		if err := c.CloseSession(ctx, op.Session, true); err != nil {
			t.Fatal(err)
		}
		return tables, gpuBatches
	}
	gpuTables, gb := run(GPUAuto)
	cpuTables, cb := run(GPUOff)
	if gb < cycles || cb != 0 {
		t.Fatalf("GPU-scored batches: %d with scorer auto, %d with off", gb, cb)
	}
	for k := range cycles {
		a, b := cpuTables[k], gpuTables[k]
		common := 0
		for _, p := range b {
			if slices.Contains(a, p) {
				common++
			}
		}
		t.Logf("cycle %d: CPU table %d pages, GPU table %d, %d in common", k, len(a), len(b), common)
		if len(a) != len(b) || float64(common) < 0.95*float64(len(a)) {
			t.Errorf("cycle %d: tables differ: CPU %v, GPU %v", k, a, b)
		}
	}
}
