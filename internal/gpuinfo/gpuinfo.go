package gpuinfo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// ErrNoGPU means NVML is missing, failed to initialise, or sees no device.
var ErrNoGPU = errors.New("gpuinfo: no GPU")

// ErrNVML wraps a failed NVML query; the message names the query and the device.
var ErrNVML = errors.New("gpuinfo: NVML query failed")

// ErrDevice is returned for a device index the host does not have.
var ErrDevice = errors.New("gpuinfo: no such device")

// ErrConfig is returned by ReserveBytes for a fraction outside (0, 1] or a zero granularity.
var ErrConfig = errors.New("gpuinfo: invalid reserve configuration")

// Info is one device's state at one moment.
type Info struct {
	Index    int
	Name     string
	UUID     string
	MemTotal uint64 // bytes
	MemFree  uint64
	MemUsed  uint64
	// UtilGPU and UtilMem are percentages over the driver's last sample period.
	UtilGPU, UtilMem uint32
	// ECCSupported is false when ECC is off or not reported; ECCUncorrected is then 0.
	ECCSupported   bool
	ECCUncorrected uint64 // volatile (since driver load) uncorrected errors
	// Throttle is the raw clock-event-reason mask; ThrottleNames decodes it.
	Throttle uint64
}

// throttleNames follows nvml.h's nvmlClocksEventReason bits.
var throttleNames = []struct {
	bit  uint64
	name string
}{
	{nvml.ClocksEventReasonGpuIdle, "idle"},
	{nvml.ClocksEventReasonApplicationsClocksSetting, "app-clocks"},
	{nvml.ClocksEventReasonSwPowerCap, "sw-power-cap"},
	{nvml.ClocksThrottleReasonHwSlowdown, "hw-slowdown"},
	{nvml.ClocksEventReasonSyncBoost, "sync-boost"},
	{nvml.ClocksEventReasonSwThermalSlowdown, "sw-thermal"},
	{nvml.ClocksThrottleReasonHwThermalSlowdown, "hw-thermal"},
	{nvml.ClocksThrottleReasonHwPowerBrakeSlowdown, "hw-power-brake"},
	{nvml.ClocksEventReasonDisplayClockSetting, "display-clock"},
}

// ThrottleNames decodes a clock-event-reason mask ("idle" alone is not throttling).
func ThrottleNames(mask uint64) []string {
	var out []string
	for _, t := range throttleNames {
		if mask&t.bit != 0 {
			out = append(out, t.name)
			mask &^= t.bit
		}
	}
	if mask != 0 {
		out = append(out, fmt.Sprintf("other(%#x)", mask))
	}
	return out
}

// HardwareThrottled reports whether the mask contains a reason that slows a busy GPU for
// hardware protection (thermal, power brake, hardware slowdown).
func HardwareThrottled(mask uint64) bool {
	return mask&(nvml.ClocksThrottleReasonHwSlowdown|nvml.ClocksThrottleReasonHwThermalSlowdown|
		nvml.ClocksThrottleReasonHwPowerBrakeSlowdown|nvml.ClocksEventReasonSwThermalSlowdown) != 0
}

// applicationXids are Xid codes an application's own fault raises (illegal address,
// MMU fault from a kernel, ...); like the Kubernetes device plugin, they do not make the
// device unhealthy.
var applicationXids = map[uint64]bool{13: true, 31: true, 43: true, 45: true, 68: true, 109: true}

// Monitor holds NVML open for the host's devices.
type Monitor struct {
	lib  nvml.Interface
	devs []nvml.Device
	log  *slog.Logger

	mu       sync.Mutex
	baseECC  []uint64   // uncorrected ECC at Open
	xids     [][]uint64 // critical Xids seen, per device
	lastInfo []Info
	closed   bool
}

// Open initialises NVML. Without a driver it logs one line and returns ErrNoGPU.
func Open(log *slog.Logger) (*Monitor, error) {
	return open(nvml.New(), log)
}

func open(lib nvml.Interface, log *slog.Logger) (*Monitor, error) {
	if log == nil {
		log = slog.Default()
	}
	if ret := lib.Init(); ret != nvml.SUCCESS {
		log.Info("no GPU: NVML unavailable, running without CUDA", "reason", ret.Error())
		return nil, fmt.Errorf("gpuinfo: nvmlInit: %v: %w", ret.Error(), ErrNoGPU)
	}
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS || n == 0 {
		lib.Shutdown()
		log.Info("no GPU: NVML sees no device, running without CUDA", "count", n, "ret", ret.Error())
		return nil, fmt.Errorf("gpuinfo: %d devices (%v): %w", n, ret.Error(), ErrNoGPU)
	}
	m := &Monitor{lib: lib, log: log, baseECC: make([]uint64, n), xids: make([][]uint64, n)}
	for i := 0; i < n; i++ {
		d, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			lib.Shutdown()
			return nil, fmt.Errorf("gpuinfo: device %d handle: %v: %w", i, ret.Error(), ErrNVML)
		}
		m.devs = append(m.devs, d)
	}
	infos, err := m.Snapshot()
	if err != nil {
		lib.Shutdown()
		return nil, err
	}
	for i, in := range infos {
		m.baseECC[i] = in.ECCUncorrected
	}
	return m, nil
}

// Count is the number of devices.
func (m *Monitor) Count() int { return len(m.devs) }

// Snapshot reads every device. Queries a device does not support (utilisation on some
// virtualised GPUs, ECC on consumer cards) leave their fields zero.
func (m *Monitor) Snapshot() ([]Info, error) {
	out := make([]Info, len(m.devs))
	for i, d := range m.devs {
		in := Info{Index: i}
		var ret nvml.Return
		if in.Name, ret = d.GetName(); ret != nvml.SUCCESS {
			return nil, fmt.Errorf("gpuinfo: device %d name: %v: %w", i, ret.Error(), ErrNVML)
		}
		if in.UUID, ret = d.GetUUID(); ret != nvml.SUCCESS {
			return nil, fmt.Errorf("gpuinfo: device %d uuid: %v: %w", i, ret.Error(), ErrNVML)
		}
		mem, ret := d.GetMemoryInfo()
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("gpuinfo: device %d memory: %v: %w", i, ret.Error(), ErrNVML)
		}
		in.MemTotal, in.MemFree, in.MemUsed = mem.Total, mem.Free, mem.Used
		if u, ret := d.GetUtilizationRates(); ret == nvml.SUCCESS {
			in.UtilGPU, in.UtilMem = u.Gpu, u.Memory
		}
		if e, ret := d.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC); ret == nvml.SUCCESS {
			in.ECCSupported, in.ECCUncorrected = true, e
		}
		if r, ret := d.GetCurrentClocksEventReasons(); ret == nvml.SUCCESS {
			in.Throttle = r
		}
		out[i] = in
	}
	m.mu.Lock()
	m.lastInfo = out
	m.mu.Unlock()
	return out, nil
}

// WatchXid records critical Xid events of every device until ctx ends (run it in its own
// goroutine). It returns nil on cancellation, or an error if NVML cannot deliver events.
func (m *Monitor) WatchXid(ctx context.Context) error {
	set, ret := m.lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		return fmt.Errorf("gpuinfo: event set: %v: %w", ret.Error(), ErrNVML)
	}
	defer set.Free()
	registered := 0
	for i, d := range m.devs {
		if ret := d.RegisterEvents(nvml.EventTypeXidCriticalError, set); ret != nvml.SUCCESS {
			m.log.Warn("gpu: Xid events unavailable", "device", i, "reason", ret.Error())
			continue
		}
		registered++
	}
	if registered == 0 {
		return fmt.Errorf("gpuinfo: no device delivers Xid events: %w", ErrNVML)
	}
	for ctx.Err() == nil {
		ev, ret := set.Wait(500)
		switch ret {
		case nvml.SUCCESS:
		case nvml.ERROR_TIMEOUT:
			continue
		default:
			return fmt.Errorf("gpuinfo: event wait: %v: %w", ret.Error(), ErrNVML)
		}
		if ev.EventType&nvml.EventTypeXidCriticalError == 0 {
			continue
		}
		idx := m.indexOf(ev.Device)
		m.log.Warn("gpu: Xid event", "device", idx, "xid", ev.EventData)
		if idx >= 0 {
			m.recordXid(idx, ev.EventData)
		}
	}
	return nil
}

func (m *Monitor) indexOf(d nvml.Device) int {
	if d == nil {
		return -1
	}
	u, ret := d.GetUUID()
	if ret != nvml.SUCCESS {
		return -1
	}
	for i, x := range m.devs {
		if v, ret := x.GetUUID(); ret == nvml.SUCCESS && v == u {
			return i
		}
	}
	return -1
}

func (m *Monitor) recordXid(i int, xid uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.xids[i] = append(m.xids[i], xid)
}

// Xids returns the critical Xids recorded for device i.
func (m *Monitor) Xids(i int) []uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if i < 0 || i >= len(m.xids) {
		return nil
	}
	return append([]uint64(nil), m.xids[i]...)
}

// Healthy judges device i from the last Snapshot and the recorded Xids: unhealthy once its
// uncorrected ECC count has grown since Open or a non-application Xid was seen.
func (m *Monitor) Healthy(i int) (bool, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if i < 0 || i >= len(m.devs) {
		return false, fmt.Sprintf("device %d: %v", i, ErrDevice)
	}
	var in Info
	if i < len(m.lastInfo) {
		in = m.lastInfo[i]
	}
	return judge(in, m.baseECC[i], m.xids[i])
}

// judge is the health rule, kept pure for testing.
func judge(in Info, baseECC uint64, xids []uint64) (bool, string) {
	var why []string
	if in.ECCSupported && in.ECCUncorrected > baseECC {
		why = append(why, fmt.Sprintf("%d new uncorrected ECC errors", in.ECCUncorrected-baseECC))
	}
	for _, x := range xids {
		if !applicationXids[x] {
			why = append(why, fmt.Sprintf("Xid %d", x))
		}
	}
	if len(why) > 0 {
		return false, strings.Join(why, "; ")
	}
	return true, ""
}

// Close shuts NVML down.
func (m *Monitor) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	if ret := m.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("gpuinfo: nvmlShutdown: %v: %w", ret.Error(), ErrNVML)
	}
	return nil
}

// ReserveBytes sizes a GPU reserve: fraction of the free memory left after headroom (for
// the decoder's own allocations), rounded down to granularity (the VMM allocation
// granularity, typically 2 MiB). It returns 0 when nothing is left.
func ReserveBytes(free uint64, fraction float64, headroom, granularity uint64) (uint64, error) {
	if !(fraction > 0 && fraction <= 1) {
		return 0, fmt.Errorf("gpuinfo: reserve fraction %v not in (0, 1]: %w", fraction, ErrConfig)
	}
	if granularity == 0 {
		return 0, fmt.Errorf("gpuinfo: reserve granularity 0: %w", ErrConfig)
	}
	if free <= headroom {
		return 0, nil
	}
	n := uint64(float64(free-headroom) * fraction)
	return n / granularity * granularity, nil
}
