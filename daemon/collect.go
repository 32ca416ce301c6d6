package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashmemory/flashmemory/tiers"
)

// tierCollector reads the tiers' counters at scrape time, so the data path
// keeps its own atomic counters and pays nothing for Prometheus.
type tierCollector struct{ d *Daemon }

var (
	descTierBytes     = prometheus.NewDesc("flashmem_tier_bytes", "Bytes of pages held per tier.", []string{"tier"}, nil)
	descTierCapacity  = prometheus.NewDesc("flashmem_tier_capacity_bytes", "Byte budget per tier (0 = unbounded).", []string{"tier"}, nil)
	descTierPages     = prometheus.NewDesc("flashmem_tier_pages", "Pages held per tier.", []string{"tier"}, nil)
	descTierHits      = prometheus.NewDesc("flashmem_tier_hits_total", "Page reads served per tier.", []string{"tier"}, nil)
	descTierMisses    = prometheus.NewDesc("flashmem_tier_misses_total", "Page reads a tier could not serve.", []string{"tier"}, nil)
	descTierIn        = prometheus.NewDesc("flashmem_tier_written_bytes_total", "Bytes written into each tier.", []string{"tier"}, nil)
	descTierOut       = prometheus.NewDesc("flashmem_tier_read_bytes_total", "Bytes read out of each tier.", []string{"tier"}, nil)
	descTierIntegrity = prometheus.NewDesc("flashmem_tier_integrity_errors_total", "Reads that failed checksum verification.", []string{"tier"}, nil)
	descSpills        = prometheus.NewDesc("flashmem_spilled_pages_total", "Pages moved from the host mirror to SSD to stay in budget.", nil, nil)
	descBroughtBack   = prometheus.NewDesc("flashmem_ssd_recalled_pages_total", "Pages read back from SSD into the host mirror.", nil, nil)
	descGPUWrites     = prometheus.NewDesc("flashmem_gpu_reserve_writes_total", "Page writes into GPU reserves by path: pinned (DMA or gather kernel straight from the pinned host mirror) or staged (through a region's pinned staging buffer: pages read back from SSD, decode commits).", []string{"path"}, nil)
	descStageBackoffs = prometheus.NewDesc("flashmem_stage_backoffs_total", "Times lookahead staging halved its concurrency because SSD reads slowed down (the disk was the bottleneck).", nil, nil)
	descStageBytes    = prometheus.NewDesc("flashmem_stage_read_bytes_total", "Bytes lookahead staging brought from SSD into the host mirror.", nil, nil)
	descStageSeconds  = prometheus.NewDesc("flashmem_stage_read_seconds_total", "Time staging reads took, summed over the stagers.", nil, nil)
	descPrefetch      = prometheus.NewDesc("flashmem_prefetch_pages_total", "Lookahead staging outcome: staged (SSD→host ahead of need), used (staged, then read), unused (staged, evicted unread), late (needed but still on SSD).", []string{"outcome"}, nil)
	descFootprint     = prometheus.NewDesc("flashmem_footprint_ratio", "Resident bytes (the pages decoders use this cycle) over total KV bytes, all live sessions.", nil, nil)
	descResident      = prometheus.NewDesc("flashmem_resident_bytes", "Bytes of the pages decoders use this cycle.", nil, nil)
	descTotal         = prometheus.NewDesc("flashmem_kv_bytes", "Bytes of the KV history of all live sessions.", nil, nil)
	descSessions      = prometheus.NewDesc("flashmem_sessions", "Live sessions.", nil, nil)
)

func (c *tierCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTierBytes, descTierCapacity, descTierPages, descTierHits, descTierMisses,
		descTierIn, descTierOut, descTierIntegrity, descSpills, descBroughtBack, descGPUWrites, descPrefetch, descFootprint, descResident, descTotal, descSessions,
		descStageBackoffs, descStageBytes, descStageSeconds} {
		ch <- d
	}
}

func (c *tierCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	st := d.store.Snapshot()
	for _, t := range []struct {
		name string
		s    tiers.TierStats
	}{{"reserve", d.reserveStats()}, {"host", st.Mirror}, {"ssd", st.SSD}} {
		g := func(desc *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, t.name)
		}
		cnt := func(desc *prometheus.Desc, v uint64) {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), t.name)
		}
		g(descTierBytes, float64(t.s.Bytes))
		g(descTierCapacity, float64(t.s.Capacity))
		g(descTierPages, float64(t.s.Pages))
		cnt(descTierHits, t.s.Hits)
		cnt(descTierMisses, t.s.Misses)
		cnt(descTierIn, t.s.BytesIn)
		cnt(descTierOut, t.s.BytesOut)
		cnt(descTierIntegrity, t.s.IntegrityErrors)
	}
	ch <- prometheus.MustNewConstMetric(descSpills, prometheus.CounterValue, float64(st.Spills))
	ch <- prometheus.MustNewConstMetric(descBroughtBack, prometheus.CounterValue, float64(st.BroughtBack))
	pinnedW, stagedW := tiers.CUDAWriteStats()
	ch <- prometheus.MustNewConstMetric(descGPUWrites, prometheus.CounterValue, float64(pinnedW), "pinned")
	ch <- prometheus.MustNewConstMetric(descGPUWrites, prometheus.CounterValue, float64(stagedW), "staged")
	for _, o := range []struct {
		k string
		v uint64
	}{{"staged", st.Staged}, {"used", st.StagedUsed}, {"unused", st.StagedUnused}, {"late", d.mover.Stats().NeededLate}} {
		ch <- prometheus.MustNewConstMetric(descPrefetch, prometheus.CounterValue, float64(o.v), o.k)
	}
	ms := d.mover.Stats()
	ch <- prometheus.MustNewConstMetric(descStageBackoffs, prometheus.CounterValue, float64(ms.StageBackoffs))
	ch <- prometheus.MustNewConstMetric(descStageBytes, prometheus.CounterValue, float64(ms.StagedBytes))
	ch <- prometheus.MustNewConstMetric(descStageSeconds, prometheus.CounterValue, ms.StageReadSeconds)
	resident, total := d.footprint()
	ratio := 0.0
	if total > 0 {
		ratio = float64(resident) / float64(total)
	}
	ch <- prometheus.MustNewConstMetric(descFootprint, prometheus.GaugeValue, ratio)
	ch <- prometheus.MustNewConstMetric(descResident, prometheus.GaugeValue, float64(resident))
	ch <- prometheus.MustNewConstMetric(descTotal, prometheus.GaugeValue, float64(total))
	d.mu.Lock()
	n := len(d.sessions)
	d.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(n))
}
