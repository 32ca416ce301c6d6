// Package gpuinfo reads the GPUs of the host through NVML (github.com/NVIDIA/go-nvml, which
// loads libnvidia-ml.so.1 with dlopen, so it builds and runs on machines without any NVIDIA
// software): device names and UUIDs, memory total/free/used, utilisation, uncorrected ECC
// counts, clock-throttle reasons, and Xid events; it judges each device's health and sizes
// the GPU reserve from free memory.
//
// It needs no build tag. On a host without the driver Open returns ErrNoGPU after logging
// one line, and the daemon behaves as a CPU build.
//
// Use:
//
//	m, err := gpuinfo.Open(logger)        // errors.Is(err, gpuinfo.ErrNoGPU): CPU mode
//	defer m.Close()
//	go m.WatchXid(ctx)                     // records Xid events until ctx ends
//	infos, err := m.Snapshot()             // export as metrics
//	ok, why := m.Healthy(0)                // unhealthy on new uncorrected ECC or a critical Xid
//	n, err := gpuinfo.ReserveBytes(infos[0].MemFree, 0.8, 2<<30, 2<<20)
package gpuinfo
