package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the daemon's own instruments. Tier counters are read from the
// tiers at scrape time by a collector (see collect.go), so the hot path only
// touches these few.
type metrics struct {
	reg *prometheus.Registry

	cycleSeconds  prometheus.Histogram
	scoreSeconds  prometheus.Histogram
	waitSeconds   prometheus.Histogram
	cycleSessions prometheus.Histogram
	framesTotal   *prometheus.CounterVec
	errorsTotal   *prometheus.CounterVec
	appendBytes   prometheus.Counter
	commitChunks  prometheus.Counter
	recalledPages prometheus.Counter
	// recallDeferred / recallResumed: background-recall pages that found no
	// free slot at the CYCLE, and those of them a RELEASE started (cycle.go).
	recallDeferred, recallResumed prometheus.Counter
	leasesReclaim                 prometheus.Counter
	connections                   prometheus.Gauge
	rejectedConns                 prometheus.Counter
}

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	lat := prometheus.ExponentialBuckets(20e-6, 2, 18)
	m := &metrics{
		reg:            reg,
		cycleSeconds:   prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flashmem_cycle_seconds", Help: "Time from a CYCLE frame's arrival to its reply, per frame.", Buckets: lat}),
		scoreSeconds:   prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flashmem_score_seconds", Help: "Memory-Indexer scoring and selection time per CYCLE frame.", Buckets: lat}),
		waitSeconds:    prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flashmem_cycle_wait_seconds", Help: "Wait per session cycle for page data (the reply's wait_us): blocked on the previous cycle's recall still copying plus synchronous loads; 0 when every page was already resident.", Buckets: append([]float64{0}, lat...)}),
		cycleSessions:  prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flashmem_cycle_batch_sessions", Help: "Sessions carried by one CYCLE frame.", Buckets: prometheus.ExponentialBuckets(1, 2, 10)}),
		framesTotal:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flashmem_frames_total", Help: "Request frames handled, by op."}, []string{"op"}),
		errorsTotal:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flashmem_errors_total", Help: "Error frames sent, by wire error code name."}, []string{"code"}),
		appendBytes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "flashmem_append_bytes_total", Help: "KV payload bytes appended by clients."}),
		commitChunks:   prometheus.NewCounter(prometheus.CounterOpts{Name: "flashmem_commit_chunks_total", Help: "Decode chunks committed from reserve cells."}),
		recalledPages:  prometheus.NewCounter(prometheus.CounterOpts{Name: "flashmem_recalled_pages_total", Help: "Pages copied into reserve slots by recall."}),
		recallDeferred: prometheus.NewCounter(prometheus.CounterOpts{Name: "flashmem_recall_deferred_pages_total", Help: "Background-recall pages that found every evictable reserve slot pinned at the CYCLE (the previous lease still held): started at its RELEASE instead."}),
		recallResumed:  prometheus.NewCounter(prometheus.CounterOpts{Name: "flashmem_recall_resumed_pages_total", Help: "Deferred background-recall pages started when the client released its previous lease."}),
		leasesReclaim:  prometheus.NewCounter(prometheus.CounterOpts{Name: "flashmem_leases_reclaimed_total", Help: "Leases reclaimed from dead or idle clients."}),
		connections:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "flashmem_connections", Help: "Open client connections."}),
		rejectedConns:  prometheus.NewCounter(prometheus.CounterOpts{Name: "flashmem_rejected_connections_total", Help: "Connections refused by peer-credential checks or limits."}),
	}
	reg.MustRegister(m.cycleSeconds, m.scoreSeconds, m.waitSeconds, m.cycleSessions, m.framesTotal, m.errorsTotal,
		m.appendBytes, m.commitChunks, m.recalledPages, m.recallDeferred, m.recallResumed, m.leasesReclaim, m.connections, m.rejectedConns)
	return m
}

// listenMetrics binds the metrics address before the daemon reports ready,
// so a taken port fails the start. addr is "host:port" (loopback only),
// "unix:/path", or "off"/"" (nil listener).
func listenMetrics(addr string) (net.Listener, error) {
	if addr == "" || addr == "off" {
		return nil, nil
	}
	var ln net.Listener
	var err error
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		_ = os.Remove(path)
		ln, err = net.Listen("unix", path)
	} else {
		host, _, serr := net.SplitHostPort(addr)
		if serr != nil {
			return nil, fmt.Errorf("%w: metrics address %q: %v (use HOST:PORT on loopback, unix:/path, or off)", ErrConfig, addr, serr)
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("%w: metrics address %q is not loopback (use 127.0.0.1:PORT, unix:/path, or off)", ErrConfig, addr)
		}
		ln, err = net.Listen("tcp", addr)
	}
	if err != nil {
		return nil, metricsListenError(addr, err)
	}
	return ln, nil
}

// serveMetrics serves /metrics and /healthz on ln (nil: nothing) until the
// returned stop is called.
func serveMetrics(log *slog.Logger, ln net.Listener, reg *prometheus.Registry, healthy func() error) func() {
	if ln == nil {
		return func() {}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := healthy(); err != nil {
			http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("metrics listening", "addr", ln.Addr().String())
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}
}
