package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/indexer/gpuscore"
	"github.com/flashmemory/flashmemory/internal/cuda"
	"github.com/flashmemory/flashmemory/internal/gpuinfo"
	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// ErrGPUUnhealthy is what healthy() reports (and /healthz prints, and the
// systemd watchdog acts on) while NVML judges a GPU unhealthy or cannot read
// it; the message names the device and the reason.
var ErrGPUUnhealthy = errors.New("GPU unhealthy")

// vmmGranularity rounds GPU reserve budgets; CUDA VMM allocations are
// multiples of the device's granularity, 2 MiB on every current GPU, so a
// budget in whole granules is not eaten by rounding.
const vmmGranularity = 2 << 20

// gpuPollInterval is how often NVML is read for the health rule (ECC counts
// grow between scrapes too; Xids arrive through WatchXid at once).
const gpuPollInterval = 5 * time.Second

// gpuMonitor is what the daemon needs from NVML; *gpuinfo.Monitor is the real
// one, and tests drive the daemon's GPU logic through their own.
type gpuMonitor interface {
	Count() int
	Snapshot() ([]gpuinfo.Info, error)
	Healthy(i int) (bool, string)
	Xids(i int) []uint64
	WatchXid(ctx context.Context) error
	Close() error
}

// gpuHooks are the daemon's seams to the host's GPUs: how NVML is opened and
// whether the binary has CUDA. New uses the real ones; tests replace them
// with withGPUHooks.
type gpuHooks struct {
	openMonitor func(*slog.Logger) (gpuMonitor, error)
	cuda        bool
}

func realGPUHooks() gpuHooks {
	return gpuHooks{
		openMonitor: func(l *slog.Logger) (gpuMonitor, error) {
			m, err := gpuinfo.Open(l)
			if err != nil {
				return nil, err // a nil *Monitor must not become a non-nil interface
			}
			return m, nil
		},
		cuda: cuda.Available,
	}
}

// withGPUHooks replaces NVML and the CUDA switch (tests).
func withGPUHooks(h gpuHooks) Option { return func(d *Daemon) { d.gpuHooks = &h } }

// gpuDevice is one CUDA device whose memory holds session reserves.
type gpuDevice struct {
	ordinal int
	name    string
	dev     *cuda.Device
	// reserve is nil when the device has no budget (free memory below the
	// headroom at start).
	reserve *tiers.Reserve
	budget  int64
	// exportable: the device can export VMM allocations as POSIX fds, the
	// only way a reserve reaches the decoder today.
	exportable bool
}

func (g *gpuDevice) left() int64 {
	if g.reserve == nil {
		return 0
	}
	return g.budget - g.reserve.Used()
}

// gpuSubsystem owns NVML (metrics, health) and the per-device reserves. With
// no CUDA device it holds at most the monitor, and every session gets the
// host reserve.
type gpuSubsystem struct {
	log  *slog.Logger
	mon  gpuMonitor // nil: no NVML
	devs []*gpuDevice
	host *tiers.Reserve

	// scorers are the LSA models wrapped to score on a GPU (wrapScorers), one
	// per model and CUDA device; byDevice finds them by model name and device.
	scorers  []namedScorer
	byDevice map[string]map[uint32]*gpuscore.Scorer
	// pinned: the host mirror's extents are registered with CUDA.
	pinned bool

	mu      sync.Mutex
	pollErr error          // last Snapshot failure; nil once a poll succeeds
	sick    map[int]string // NVML index -> reason, as last logged
}

// openGPU brings up the GPU side after the tiers: NVML, then (cuda builds
// only) one reserve per CUDA device sized from its free memory. Any failure
// to find or use GPUs leaves a working CPU daemon; only a broken
// configuration is an error.
func openGPU(cfg GPUConfig, maxRegions int, host *tiers.Reserve, log *slog.Logger, h gpuHooks) (*gpuSubsystem, error) {
	g := &gpuSubsystem{log: log, host: host, sick: map[int]string{}}
	if cfg.Mode == GPUOff {
		log.Info("GPU support off ([gpu] mode = \"off\"): session reserves stay in host memory")
		return g, nil
	}
	mon, err := h.openMonitor(log)
	if err != nil {
		if !errors.Is(err, gpuinfo.ErrNoGPU) {
			// gpuinfo logs its own line for ErrNoGPU; other failures get this one.
			log.Info("no GPU: NVML unusable, running without CUDA", "err", err)
		}
		return g, nil
	}
	g.mon = mon
	n := mon.Count()
	if !h.cuda {
		log.Info("GPUs found but this flashmemd is built without CUDA: session reserves stay in host memory; "+
			"build the CUDA daemon with scripts/build-cuda.sh (.gpu/flashmemd)", "gpus", n)
		return g, nil
	}
	count, err := cuda.DeviceCount()
	if err != nil || count == 0 {
		log.Warn("NVML sees GPUs but CUDA none: session reserves stay in host memory", "gpus", n, "cuda_devices", count, "err", err)
		return g, nil
	}
	for i := range count {
		gd, err := openGPUDevice(i, cfg, maxRegions, log)
		if err != nil {
			g.Close()
			return nil, err
		}
		g.devs = append(g.devs, gd)
	}
	return g, nil
}

func openGPUDevice(i int, cfg GPUConfig, maxRegions int, log *slog.Logger) (*gpuDevice, error) {
	dev, err := cuda.Open(i)
	if err != nil {
		return nil, fmt.Errorf("GPU %d: %w", i, err)
	}
	free, total, err := dev.MemInfo()
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("GPU %d free memory: %w", i, err)
	}
	budget, err := gpuinfo.ReserveBytes(uint64(max(free, 0)), cfg.ReserveFraction, uint64(cfg.HeadroomBytes), vmmGranularity)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("%w: GPU %d reserve: %v", ErrConfig, i, err)
	}
	gd := &gpuDevice{ordinal: i, name: dev.Name(), dev: dev, budget: int64(budget), exportable: dev.VMMSupported()}
	if budget > 0 {
		gd.reserve = tiers.NewReserve(tiers.ReserveConfig{Budget: int64(budget), MaxRegions: maxRegions, Backend: tiers.CUDABackend(dev)})
	}
	switch {
	case !gd.exportable:
		log.Warn("GPU cannot export VMM memory as a file descriptor (legacy IPC only): sessions cannot use it yet",
			"device", i, "name", gd.name)
	case budget == 0:
		log.Warn("GPU has no reserve budget: free memory is below headroom_bytes", "device", i, "name", gd.name,
			"free", free, "headroom_bytes", cfg.HeadroomBytes)
	default:
		log.Info("GPU reserve", "device", i, "name", gd.name, "free", free, "total", total, "budget", budget,
			"reserve_fraction", cfg.ReserveFraction, "headroom_bytes", cfg.HeadroomBytes)
	}
	return gd, nil
}

// status fills STATUS's GPU fields.
func (g *gpuSubsystem) status(r *proto.StatusReply) {
	if g == nil {
		return
	}
	r.PinnedMirror = g.pinned
	for _, gd := range g.devs {
		var used int64
		if gd.reserve != nil {
			used = gd.reserve.Used()
		}
		r.GPUs = append(r.GPUs, proto.GPUStatus{Device: uint32(gd.ordinal), Name: gd.name,
			ReserveBudgetBytes: uint64(gd.budget), ReserveUsedBytes: uint64(used), Exportable: gd.exportable})
	}
	for _, ns := range g.scorers {
		gb, cb, err := ns.s.Stats()
		sc := proto.GPUScoring{Model: ns.name, Device: uint32(ns.s.Device().Ordinal()), GPUBatches: gb, CPUFallbacks: cb}
		if err != nil {
			sc.LastError = err.Error()
		}
		r.Scoring = append(r.Scoring, sc)
	}
}

// mirrorAllocator is the host mirror's allocator: pinned through the first
// GPU that holds reserves when there is one and [gpu] pinned_mirror is on,
// else nil (plain mmap).
func (g *gpuSubsystem) mirrorAllocator(cfg GPUConfig) tiers.Allocator {
	if g == nil || !cfg.PinnedMirror {
		return nil
	}
	for _, gd := range g.devs {
		if gd.reserve != nil {
			g.log.Info("host mirror pinned for DMA recall", "device", gd.ordinal)
			g.pinned = true
			return tiers.PinnedAllocator(gd.dev)
		}
	}
	return nil
}

// namedScorer is a model that scores on a GPU, by its configured name.
type namedScorer struct {
	name string
	s    *gpuscore.Scorer
}

// wrapScorers wraps every LSA model the GPU kernel can score on every CUDA
// device ([gpu] scorer = "auto"), so that a session scores on the GPU that
// holds its reserve (scorerOn), and replaces it in models with its scorer on
// the first device (sessions whose reserve is in host memory, resumed
// sessions). A model that cannot move stays on the CPU with one log line.
func (g *gpuSubsystem) wrapScorers(cfg GPUConfig, models map[string]indexer.Scorer) {
	if g == nil || cfg.Scorer == GPUOff || len(g.devs) == 0 {
		return
	}
	for _, name := range slices.Sorted(maps.Keys(models)) {
		m, ok := models[name].(*indexer.Model)
		if !ok {
			continue
		}
		for i, gd := range g.devs {
			w, err := gpuscore.Wrap(m, gd.dev)
			if err != nil {
				g.log.Warn("Memory Indexer model does not score on this GPU", "model", name, "device", gd.ordinal, "err", err)
				continue
			}
			if models[name] == indexer.Scorer(m) || i == 0 {
				models[name] = w
			}
			if g.byDevice == nil {
				g.byDevice = map[string]map[uint32]*gpuscore.Scorer{}
			}
			if g.byDevice[name] == nil {
				g.byDevice[name] = map[uint32]*gpuscore.Scorer{}
			}
			g.byDevice[name][uint32(gd.ordinal)] = w
			g.scorers = append(g.scorers, namedScorer{name, w})
			g.log.Info("Memory Indexer model scores on the GPU", "model", name, "device", gd.ordinal)
		}
	}
}

// scorerOn is model name's scorer on CUDA device dev, if it has one there.
func (g *gpuSubsystem) scorerOn(name string, dev uint32) (indexer.Scorer, bool) {
	if g == nil {
		return nil, false
	}
	w, ok := g.byDevice[name][dev]
	return w, ok
}

// run watches Xid events and polls NVML for the health rule until ctx ends.
func (g *gpuSubsystem) run(ctx context.Context, wg *sync.WaitGroup) {
	if g == nil || g.mon == nil {
		return
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := g.mon.WatchXid(ctx); err != nil {
			// Containers often lack event support; ECC polling still works.
			g.log.Warn("GPU Xid events unavailable, health from ECC counts only", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(gpuPollInterval)
		defer t.Stop()
		for {
			g.poll()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// poll refreshes the monitor's snapshot (which Healthy judges) and logs
// health transitions once each.
func (g *gpuSubsystem) poll() {
	_, err := g.mon.Snapshot()
	g.mu.Lock()
	defer g.mu.Unlock()
	if (err == nil) != (g.pollErr == nil) {
		if err != nil {
			g.log.Error("GPU: NVML cannot read the devices, reporting unhealthy", "err", err)
		} else {
			g.log.Info("GPU: NVML reads the devices again")
		}
	}
	g.pollErr = err
	for i := range g.mon.Count() {
		ok, why := g.mon.Healthy(i)
		was, seen := g.sick[i]
		switch {
		case !ok && (!seen || was != why):
			g.log.Error("GPU unhealthy", "gpu", i, "reason", why)
			g.sick[i] = why
		case ok && seen:
			g.log.Info("GPU healthy again", "gpu", i)
			delete(g.sick, i)
		}
	}
}

// healthy is nil while every GPU NVML sees is healthy (or there is none).
func (g *gpuSubsystem) healthy() error {
	if g == nil || g.mon == nil {
		return nil
	}
	g.mu.Lock()
	perr := g.pollErr
	g.mu.Unlock()
	if perr != nil {
		return fmt.Errorf("%w: %v", ErrGPUUnhealthy, perr)
	}
	var why []string
	for i := range g.mon.Count() {
		if ok, r := g.mon.Healthy(i); !ok {
			why = append(why, fmt.Sprintf("gpu %d: %s", i, r))
		}
	}
	if len(why) > 0 {
		return fmt.Errorf("%w: %s", ErrGPUUnhealthy, strings.Join(why, "; "))
	}
	return nil
}

// Close frees the GPU reserves, then the devices, then NVML; once only
// (Daemon.Close), after the sessions' regions are destroyed.
func (g *gpuSubsystem) Close() error {
	if g == nil {
		return nil
	}
	var errs []error
	for _, ns := range g.scorers {
		errs = append(errs, ns.s.Close())
	}
	for _, gd := range g.devs {
		if gd.reserve != nil {
			errs = append(errs, gd.reserve.Close())
		}
		errs = append(errs, gd.dev.Close())
	}
	// devs and mon stay set: a late scrape then reads closed handles, which
	// fail cleanly, instead of racing with these writes.
	if g.mon != nil {
		errs = append(errs, g.mon.Close())
	}
	return errors.Join(errs...)
}

// reservePlace is where a session's region lives.
type reservePlace struct {
	reserve *tiers.Reserve
	kind    proto.RegionKind
	device  uint32 // proto.NoDevice for host memory
}

// reserveWant is the device a session's OPEN named. The zero value, a
// session rebuilt from SSD (its metadata does not record the device), is
// the daemon's choice.
type reserveWant struct {
	named  bool
	device uint32
}

func wantDevice(dev uint32) reserveWant { return reserveWant{named: true, device: dev} }

// candidates lists the places a session's region may be created, best first:
// the host reserve on hosts without CUDA devices (whatever was asked), the
// named device, or the exportable devices by reserve budget left.
func (g *gpuSubsystem) candidates(w reserveWant) ([]reservePlace, error) {
	hostPlace := []reservePlace{{reserve: g.host, kind: proto.RegionMemfd, device: proto.NoDevice}}
	if len(g.devs) == 0 || (w.named && w.device == proto.DeviceHostOnly) {
		return hostPlace, nil
	}
	place := func(gd *gpuDevice) reservePlace {
		return reservePlace{reserve: gd.reserve, kind: proto.RegionCUDA, device: uint32(gd.ordinal)}
	}
	if w.named && w.device != proto.DeviceAny {
		if int64(w.device) >= int64(len(g.devs)) {
			return nil, proto.CodeBadRequest.Errorf("device %d: this daemon serves %d GPUs (0..%d), or %#x for any, %#x for host memory",
				w.device, len(g.devs), len(g.devs)-1, proto.DeviceAny, proto.DeviceHostOnly)
		}
		gd := g.devs[w.device]
		if !gd.exportable {
			return nil, proto.CodeBadRequest.Errorf("device %d (%s) shares memory only through legacy CUDA IPC handles, which flashmemd does not serve yet; name another device",
				gd.ordinal, gd.name)
		}
		if gd.reserve == nil {
			return nil, proto.CodeLimitExceeded.Errorf("device %d (%s) has no reserve budget (free memory below gpu.headroom_bytes at start)", gd.ordinal, gd.name)
		}
		return []reservePlace{place(gd)}, nil
	}
	var usable []*gpuDevice
	for _, gd := range g.devs {
		if gd.exportable && gd.reserve != nil {
			usable = append(usable, gd)
		}
	}
	if len(usable) == 0 {
		return nil, proto.CodeBadRequest.Errorf("none of the %d GPUs can hold a reserve a decoder can import (no budget, or legacy IPC only); OPEN with device %#x for host memory",
			len(g.devs), proto.DeviceHostOnly)
	}
	slices.SortStableFunc(usable, func(a, b *gpuDevice) int { return cmp.Compare(b.left(), a.left()) })
	out := make([]reservePlace, len(usable))
	for i, gd := range usable {
		out[i] = place(gd)
	}
	return out, nil
}

// regionPlaces records where each live region lives. regionDesc builds RESUME
// replies (persist.go) from the region alone, so the kind and device are
// looked up here rather than passed along.
var regionPlaces sync.Map // *tiers.Region -> reservePlace

// reserveStats sums the reserve tier over host memory and every GPU. With
// GPUs, Capacity is their budgets (the host reserve is unbounded and serves
// only DeviceHostOnly sessions).
func (d *Daemon) reserveStats() tiers.TierStats {
	s := d.reserve.Stats()
	// A cycle's table reads the reserve: pages already in their slot at the
	// right generation are its hits, pages it had to copy in its misses.
	s.Hits += d.reserveHits.Load()
	s.Misses += d.reserveMisses.Load()
	if d.gpu == nil || len(d.gpu.devs) == 0 {
		return s
	}
	s.Capacity = 0
	for _, gd := range d.gpu.devs {
		if gd.reserve == nil {
			continue
		}
		st := gd.reserve.Stats()
		s.AddCounters(st)
		s.Pages += st.Pages
		s.Bytes += st.Bytes
		s.Capacity += st.Capacity
	}
	return s
}

// gpuCollector exports NVML's view of every GPU and the GPU reserves at
// scrape time.
type gpuCollector struct{ g *gpuSubsystem }

var (
	gpuLabels                                    = []string{"gpu", "uuid", "name"}
	descGPUUp                                    = prometheus.NewDesc("flashmem_gpu_nvml_up", "1 when NVML read every GPU at this scrape, 0 when it failed (absent without NVML).", nil, nil)
	descGPUMemTotal                              = prometheus.NewDesc("flashmem_gpu_memory_total_bytes", "GPU memory, total.", gpuLabels, nil)
	descGPUMemUsed                               = prometheus.NewDesc("flashmem_gpu_memory_used_bytes", "GPU memory in use by every process.", gpuLabels, nil)
	descGPUMemFree                               = prometheus.NewDesc("flashmem_gpu_memory_free_bytes", "GPU memory free.", gpuLabels, nil)
	descGPUUtil                                  = prometheus.NewDesc("flashmem_gpu_utilization_percent", "Share of the last sample period a kernel ran (NVML utilization.gpu).", gpuLabels, nil)
	descGPUMemUtil                               = prometheus.NewDesc("flashmem_gpu_memory_utilization_percent", "Share of the last sample period device memory was read or written.", gpuLabels, nil)
	descGPUECC                                   = prometheus.NewDesc("flashmem_gpu_ecc_uncorrected_errors", "Volatile uncorrected ECC errors since the driver loaded (absent where ECC is off).", gpuLabels, nil)
	descGPUThrottle                              = prometheus.NewDesc("flashmem_gpu_throttle_reasons", "NVML clock-event-reason bitmask (nvmlClocksEventReason*); 0 = full clocks, 1 = idle.", gpuLabels, nil)
	descGPUHWThrottle                            = prometheus.NewDesc("flashmem_gpu_hw_throttled", "1 while clocks are cut for hardware protection (thermal, power brake, hardware slowdown).", gpuLabels, nil)
	descGPUXids                                  = prometheus.NewDesc("flashmem_gpu_xid_events", "Critical Xid events seen since the daemon started.", gpuLabels, nil)
	descGPUHealthy                               = prometheus.NewDesc("flashmem_gpu_healthy", "1 while the GPU is healthy (no new uncorrected ECC error, no non-application Xid).", gpuLabels, nil)
	descGPUResBudget                             = prometheus.NewDesc("flashmem_gpu_reserve_budget_bytes", "Bytes of GPU memory session reserves may take on a CUDA device.", []string{"device"}, nil)
	descGPUResUsed                               = prometheus.NewDesc("flashmem_gpu_reserve_used_bytes", "Bytes of GPU memory held by session reserves on a CUDA device.", []string{"device"}, nil)
	descGPUExportable                            = prometheus.NewDesc("flashmem_gpu_reserve_exportable", "1 when the CUDA device exports reserves as VMM POSIX fds (0: legacy IPC only, not served).", []string{"device"}, nil)
	descIndexerBatches                           = prometheus.NewDesc("flashmem_indexer_gpu_batches_total", "Scoring batches of GPU-scored models: on the GPU, or on the CPU after the GPU failed (fallback).", []string{"model", "where"}, nil)
	descIndexerCycleBatches                      = prometheus.NewDesc("flashmem_indexer_gpu_cycle_batches_total", "Batches of GPU-scored models that ran as one whole indexer cycle on the GPU (projections, scoring, selection), all GPUs.", []string{"model"}, nil)
	descIndexerCycleSeconds                      = prometheus.NewDesc("flashmem_indexer_gpu_cycle_seconds_total", "GPU time of those batches, input copy to output copy (CUDA events), all GPUs.", []string{"model"}, nil)
	gpuCollectorDescs                            = []*prometheus.Desc{descIndexerBatches, descIndexerCycleBatches, descIndexerCycleSeconds, descGPUUp, descGPUMemTotal, descGPUMemUsed, descGPUMemFree, descGPUUtil, descGPUMemUtil, descGPUECC, descGPUThrottle, descGPUHWThrottle, descGPUXids, descGPUHealthy, descGPUResBudget, descGPUResUsed, descGPUExportable}
	_                       prometheus.Collector = (*gpuCollector)(nil)
)

func (c *gpuCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range gpuCollectorDescs {
		ch <- d
	}
}

func (c *gpuCollector) Collect(ch chan<- prometheus.Metric) {
	g := c.g
	type sums struct{ gb, cb, cyc, secs float64 }
	per := map[string]*sums{}
	for _, ns := range g.scorers {
		gb, cb, _ := ns.s.Stats()
		t := ns.s.Timings()
		x := per[ns.name]
		if x == nil {
			x = &sums{}
			per[ns.name] = x
		}
		x.gb, x.cb, x.cyc, x.secs = x.gb+float64(gb), x.cb+float64(cb), x.cyc+float64(t.CycleBatches), x.secs+t.GPU.Seconds()
	}
	for _, name := range slices.Sorted(maps.Keys(per)) {
		x := per[name]
		ch <- prometheus.MustNewConstMetric(descIndexerBatches, prometheus.CounterValue, x.gb, name, "gpu")
		ch <- prometheus.MustNewConstMetric(descIndexerBatches, prometheus.CounterValue, x.cb, name, "cpu_fallback")
		ch <- prometheus.MustNewConstMetric(descIndexerCycleBatches, prometheus.CounterValue, x.cyc, name)
		ch <- prometheus.MustNewConstMetric(descIndexerCycleSeconds, prometheus.CounterValue, x.secs, name)
	}
	for _, gd := range g.devs {
		dev := strconv.Itoa(gd.ordinal)
		used := int64(0)
		if gd.reserve != nil {
			used = gd.reserve.Used()
		}
		ch <- prometheus.MustNewConstMetric(descGPUResBudget, prometheus.GaugeValue, float64(gd.budget), dev)
		ch <- prometheus.MustNewConstMetric(descGPUResUsed, prometheus.GaugeValue, float64(used), dev)
		ch <- prometheus.MustNewConstMetric(descGPUExportable, prometheus.GaugeValue, b2f(gd.exportable), dev)
	}
	if g.mon == nil {
		return
	}
	infos, err := g.mon.Snapshot()
	ch <- prometheus.MustNewConstMetric(descGPUUp, prometheus.GaugeValue, b2f(err == nil))
	if err != nil {
		return
	}
	for _, in := range infos {
		lv := []string{strconv.Itoa(in.Index), in.UUID, in.Name}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
		}
		gauge(descGPUMemTotal, float64(in.MemTotal))
		gauge(descGPUMemUsed, float64(in.MemUsed))
		gauge(descGPUMemFree, float64(in.MemFree))
		gauge(descGPUUtil, float64(in.UtilGPU))
		gauge(descGPUMemUtil, float64(in.UtilMem))
		if in.ECCSupported {
			gauge(descGPUECC, float64(in.ECCUncorrected))
		}
		gauge(descGPUThrottle, float64(in.Throttle))
		gauge(descGPUHWThrottle, b2f(gpuinfo.HardwareThrottled(in.Throttle)))
		gauge(descGPUXids, float64(len(g.mon.Xids(in.Index))))
		ok, _ := g.mon.Healthy(in.Index)
		gauge(descGPUHealthy, b2f(ok))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
