package ctl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
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
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flashmemory/flashmemory/eval"
	"github.com/flashmemory/flashmemory/internal/synth"
	"github.com/flashmemory/flashmemory/proto"
)

// Tiering modes the simulator compares; each is one flashmemd [mover]
// setting.
const (
	ModeLookahead = "lookahead" // staging = true, background_recall = true (the design)
	// ModeNoStaging: staging = false; each new selection is recalled in the
	// background from wherever it is, SSD included (LSA's one-cycle-late
	// recall alone).
	ModeNoStaging = "no-staging"
	// ModeOnDemand: the SSD tier read on demand, as LMCache and HiCache
	// read theirs: no staging, and background recall copies only pages in
	// host memory; a page only on SSD is read when a cycle hands it out,
	// the decoder waiting for it.
	ModeOnDemand = "on-demand"
	ModeLRU      = "lru" // staging and background recall off: every page loads when a cycle hands it out
)

// AllSimModes in report order.
var AllSimModes = []string{ModeLookahead, ModeNoStaging, ModeOnDemand, ModeLRU}

// SimOptions configures a tiering simulation.
type SimOptions struct {
	Sessions  int           // concurrent sessions
	Tokens    int           // context tokens per session
	Layers    int           // KV layers per page (DeepSeek-V4 rows of 37,440 B)
	Cycles    int           // decode cycles per session (< eval.TraceCycles)
	Resident  float64       // share of a session's pages in its resident set (besides sink and tail)
	Churn     float64       // share of the resident set replaced each cycle
	Foresight float64       // share of the next cycle's new pages whose score rises one cycle ahead
	CycleTime time.Duration // decode time of one cycle (τ = 64 steps) per session
	HostShare float64       // host budget as a share of all sessions' pages
	Stall     time.Duration // wait at or above which a cycle counts as stalled
	// SyncStalls counts every cycle that loaded a page of its own table
	// synchronously as stalled, however short its wait (the default);
	// false judges by the wait alone, as the capacity benchmark does with
	// a 5 ms threshold: there an on-demand read of a few pages that costs
	// the decoder 1 ms is not a stall.
	SyncStalls bool
	Seed       uint64
	Modes      []string
	// ReserveSlots is each session's reserve size in pages (0: three resident
	// sets plus 16, room to spare).
	ReserveSlots int
	// Device is OPEN's device: a GPU ordinal, proto.DeviceAny or
	// proto.DeviceHostOnly.
	Device uint32
	// Model is "trace" (the trace-replay model: selections known in advance,
	// tables checked) or "lsa": the Memory Indexer at the published
	// dimensions (hidden 4096, rank 2048, 128 heads, 3 target layers) with
	// random weights, random index keys and one random hidden state per
	// session, scored for real (on a GPU where the daemon has one); the
	// LSA default policy with fallback off, so every cycle selects KMAX pages.
	Model string
	// BypassCache keeps the page cache out of the measurement: the daemons
	// read SSD pages with O_DIRECT and run in a memory-limited cgroup where
	// the machine offers one (sim_cgroup.go). Without it they read buffered,
	// and pages read back may come from the page cache.
	BypassCache bool
	// HostBudgetBytes, when set, is the host budget itself (instead of
	// HostShare of all pages): the capacity benchmark adds sessions under
	// one fixed budget.
	HostBudgetBytes int64
	// AdmitEvery, when set, starts session i's decode i×AdmitEvery after
	// the first, as a host admits sessions one by one: without it every
	// session's first selection (a burst no lookahead foresees) hits the
	// disk in the same cycle, and at 16 sessions of 512K tokens that
	// burst alone (~400 MB) outlasts three cycles in every mode
	// (docs/benchmarks.md, "SSD as a capacity tier").
	AdmitEvery time.Duration
	// StageWorkers, when set, is the daemons' [mover] stage_workers.
	StageWorkers int
}

// Simulator models.
const (
	SimModelTrace = "trace"
	SimModelLSA   = "lsa"
)

// The published indexer's dimensions, for --model lsa.
const (
	simLSAHidden, simLSARank, simLSAHeads, simLSAHeadDim, simLSATargets = 4096, 2048, 128, 128, 3
	simLSAKeyBytes                                                      = simLSAHeadDim + 4
)

// DefaultSimOptions are the simulator's defaults: 16 sessions of 128K
// tokens (512 pages of 37,440 B), a 10 % resident set with 10 % churn,
// 100 ms of decode per cycle, a host budget of a third of all pages.
func DefaultSimOptions() SimOptions {
	return SimOptions{Sessions: 16, Tokens: 128 << 10, Layers: 1, Cycles: 48, Resident: 0.10, Churn: 0.10, Foresight: 1,
		CycleTime: 100 * time.Millisecond, HostShare: 1.0 / 3, Stall: 250 * time.Microsecond, SyncStalls: true, Seed: 1, Modes: AllSimModes,
		Device: proto.DeviceAny, Model: SimModelTrace}
}

const simRowBytes = 37440

func (o *SimOptions) validate() error {
	switch {
	case o.Sessions < 1 || o.Sessions > 256:
		return fmt.Errorf("%w: --sessions %d not in [1, 256]", ErrUsage, o.Sessions)
	case o.Tokens < 16*eval.TokensPerPage:
		return fmt.Errorf("%w: --tokens %d below 16 pages (%d)", ErrUsage, o.Tokens, 16*eval.TokensPerPage)
	case o.Layers < 1 || o.Layers > 64:
		return fmt.Errorf("%w: --layers %d not in [1, 64]", ErrUsage, o.Layers)
	case o.Cycles < 2 || o.Cycles >= eval.TraceCycles:
		return fmt.Errorf("%w: --cycles %d not in [2, %d)", ErrUsage, o.Cycles, eval.TraceCycles)
	case !(o.Resident > 0 && o.Resident < 0.5):
		return fmt.Errorf("%w: --resident %v not in (0, 0.5)", ErrUsage, o.Resident)
	case !(o.Churn >= 0 && o.Churn <= 1), !(o.Foresight >= 0 && o.Foresight <= 1):
		return fmt.Errorf("%w: --churn and --foresight must be in [0, 1]", ErrUsage)
	case !(o.HostShare > 0 && o.HostShare <= 2):
		return fmt.Errorf("%w: --host-share %v not in (0, 2]", ErrUsage, o.HostShare)
	case o.CycleTime < 0:
		return fmt.Errorf("%w: --cycle-time is negative", ErrUsage)
	case o.AdmitEvery < 0 || o.AdmitEvery > time.Minute:
		return fmt.Errorf("%w: --admit-every %v not in [0, 1m]", ErrUsage, o.AdmitEvery)
	case o.StageWorkers < 0 || o.StageWorkers > 256:
		return fmt.Errorf("%w: --stage-workers %d not in [0, 256]", ErrUsage, o.StageWorkers)
	case o.ReserveSlots < 0 || o.ReserveSlots > o.pages():
		return fmt.Errorf("%w: --reserve-slots %d not in [0, %d pages]", ErrUsage, o.ReserveSlots, o.pages())
	case o.Model != SimModelTrace && o.Model != SimModelLSA:
		return fmt.Errorf("%w: --model %q is not %s or %s", ErrUsage, o.Model, SimModelTrace, SimModelLSA)
	case o.Model == SimModelTrace && o.ReserveSlots > 0 && o.ReserveSlots < o.resident()+2:
		return fmt.Errorf("%w: --reserve-slots %d cannot hold a resident set plus sink and tail (%d pages)", ErrUsage, o.ReserveSlots, o.resident()+2)
	}
	for _, m := range o.Modes {
		if !slices.Contains(AllSimModes, m) {
			return fmt.Errorf("%w: mode %q is not one of %s", ErrUsage, m, strings.Join(AllSimModes, ", "))
		}
	}
	return nil
}

func (o *SimOptions) pages() int {
	return (o.Tokens/eval.TokensPerChunk + eval.ChunksPerPage - 1) / eval.ChunksPerPage
}

// resident is the number of non-forced pages in each cycle's set.
func (o *SimOptions) resident() int { return max(1, int(o.Resident*float64(o.pages()))) }

// reserveSlots is each session's reserve size in pages.
func (o *SimOptions) reserveSlots() int {
	if o.ReserveSlots > 0 {
		return o.ReserveSlots
	}
	if o.Model == SimModelLSA {
		// KMAX (3/32 of the pages) plus sink and tail pages, twice over.
		return min(o.pages(), 2*(o.pages()*3/32+2+2048/eval.ChunksPerPage)+16)
	}
	return min(o.pages(), 3*o.resident()+16)
}

// lsaKeys fills dst (layer-major, simLSATargets × n keys) with random index
// keys: fp8 e4m3 codes without NaN, scales like amax/448 of unit data.
func lsaKeys(r *rand.Rand, dst []byte) {
	for k := 0; k+simLSAKeyBytes <= len(dst); k += simLSAKeyBytes {
		for j := 0; j < simLSAHeadDim; j++ {
			c := byte(r.UintN(256))
			if c&0x7f == 0x7f {
				c--
			}
			dst[k+j] = c
		}
		sc := math.Float32bits(float32(0.004 + 0.004*r.Float64()))
		dst[k+simLSAHeadDim], dst[k+simLSAHeadDim+1], dst[k+simLSAHeadDim+2], dst[k+simLSAHeadDim+3] = byte(sc), byte(sc>>8), byte(sc>>16), byte(sc>>24)
	}
}

// lsaQuery is one random hidden state per target layer, as little-endian bf16.
func lsaQuery(r *rand.Rand) [][]byte {
	q := make([][]byte, simLSATargets)
	for l := range q {
		q[l] = make([]byte, 2*simLSAHidden)
		for i := 0; i < simLSAHidden; i++ {
			b := math.Float32bits(float32(r.NormFloat64())) >> 16
			q[l][2*i], q[l][2*i+1] = byte(b), byte(b>>8)
		}
	}
	return q
}

func (o *SimOptions) pageBytes() int64 {
	return int64(o.Layers) * simRowBytes
}

// HostBudget is the host mirror budget the simulator gives each daemon.
func (o *SimOptions) HostBudget() int64 {
	if o.HostBudgetBytes > 0 {
		return o.HostBudgetBytes
	}
	return int64(o.HostShare * float64(int64(o.Sessions)*int64(o.pages())*o.pageBytes()))
}

// simTrace is one session's resident sets: sets[k] are the non-forced
// pages selected at cycle k, hints[k] the pages of sets[k+1] whose score
// rises at cycle k.
type simTrace struct {
	pages int
	sets  [][]uint32
	hints [][]uint32
}

// newSimTrace draws a synthetic trace: a random set of k pages outside the
// sink (page 0) and tail (last page), each cycle replacing churn·k of them
// with random others.
func newSimTrace(r *rand.Rand, o *SimOptions) *simTrace {
	p := o.pages()
	k := max(1, int(o.Resident*float64(p)))
	t := &simTrace{pages: p}
	in := map[uint32]bool{}
	var cur []uint32
	for len(cur) < k {
		pg := uint32(1 + r.IntN(p-2))
		if !in[pg] {
			in[pg] = true
			cur = append(cur, pg)
		}
	}
	change := int(math.Round(o.Churn * float64(k)))
	for c := 0; c < o.Cycles; c++ {
		s := slices.Clone(cur)
		slices.Sort(s)
		t.sets = append(t.sets, s)
		// Next set: drop `change` random members, add as many new pages.
		r.Shuffle(len(cur), func(i, j int) { cur[i], cur[j] = cur[j], cur[i] })
		for _, pg := range cur[:change] {
			delete(in, pg)
		}
		cur = cur[change:]
		var added []uint32
		for len(added) < change {
			pg := uint32(1 + r.IntN(p-2))
			if !in[pg] && !slices.Contains(s, pg) {
				in[pg] = true
				cur = append(cur, pg)
				added = append(added, pg)
			}
		}
		var h []uint32
		for _, pg := range added {
			if r.Float64() < o.Foresight {
				h = append(h, pg)
			}
		}
		t.hints = append(t.hints, h)
	}
	return t
}

// keys encodes the trace as trace-replay keys (eval.TraceScorer): every
// chunk of a page in sets[k] has bit k; the first chunk of a hinted page has
// it too, so the page scores 1 of 64 — above threshold, below the selected
// pages, and first in the lookahead ranking.
func (t *simTrace) keys() []byte {
	chunks := t.pages * eval.ChunksPerPage
	b := make([]byte, chunks*eval.TraceKeyBytes)
	for k, s := range t.sets {
		for _, pg := range s {
			for c := int(pg) * eval.ChunksPerPage; c < (int(pg)+1)*eval.ChunksPerPage; c++ {
				eval.SetTraceBit(b[c*eval.TraceKeyBytes:(c+1)*eval.TraceKeyBytes], k)
			}
		}
		for _, pg := range t.hints[k] {
			c := int(pg) * eval.ChunksPerPage
			eval.SetTraceBit(b[c*eval.TraceKeyBytes:(c+1)*eval.TraceKeyBytes], k)
		}
	}
	return b
}

// SimCycle is what one session's cycle told the client.
type SimCycle struct {
	RTT        time.Duration // CYCLE request to reply, as the client saw it (scoring included)
	Score      time.Duration // CycleCounters.ScoreMicros
	Wait       time.Duration // CycleCounters.WaitMicros
	Recalled   int           // CycleCounters.RecalledPages
	SyncLoaded int           // Recalled minus the pages queued for background recall
	Table      int           // pages in the reply's table
}

// SimResult is one mode's outcome.
type SimResult struct {
	Mode string `json:"mode"`
	// Cycles, Stalled and the waits cover decode cycles 1…n-1 of every
	// session.
	Sessions int `json:"sessions"`
	Cycles   int `json:"cycles"`
	Stalled  int `json:"stalled_cycles"`
	// FirstStalls counts sessions whose first cycle (the end of prefill,
	// which loads sink and tail into an empty reserve) waited; not in Cycles.
	FirstStalls int     `json:"first_cycle_stalls"`
	ReserveHit  float64 `json:"reserve_hit_rate"`
	// FirstSetStalls counts stalled cycles 1: they wait for the background
	// recall of a session's whole first selection, which no earlier cycle
	// could foresee (included in Stalled).
	FirstSetStalls int `json:"first_set_stalls"`
	// StallsByCycle counts stalled sessions per cycle number, to tell a
	// daemon-wide pause (every session at one cycle) from steady misses.
	StallsByCycle map[int]int `json:"stalls_by_cycle,omitempty"`
	StallFree     float64     `json:"stall_free_fraction"`
	// StallFreeSteady covers cycles 3 and later, like SteadyWait*: once
	// each session's first selection (which no earlier cycle could
	// foresee, all sessions' at once) is in. The capacity benchmark's
	// criterion, since all sessions start at once here, where a real host
	// admits them one by one.
	StallFreeSteady float64 `json:"stall_free_steady"`
	SyncPages       int     `json:"sync_loaded_pages"`
	WaitP50         float64 `json:"wait_p50_us"`
	WaitP99         float64 `json:"wait_p99_us"`
	WaitMax         float64 `json:"wait_max_us"`
	Mismatch        int     `json:"table_mismatches"`
	HostBudget      int64   `json:"host_budget_bytes"`
	KVBytes         int64   `json:"kv_bytes"`
	// ReserveBytes is the reserve memory the sessions held at the end of the
	// decode (GPU memory on a GPU host), ReserveKind where it was.
	ReserveBytes int64  `json:"reserve_bytes"`
	ReserveKind  string `json:"reserve_kind"`
	// PagesPerCycle is the mean number of pages copied into a session's
	// reserve per decode cycle (background recall and synchronous loads),
	// not counting the first fill of each empty reserve.
	PagesPerCycle float64 `json:"pages_recalled_per_cycle"`
	// SteadyWait* cover cycles 3 and later only: by then each session's
	// first selection (a burst of every session's pages at once) is in.
	SteadyCycles  int     `json:"steady_cycles"`
	SteadyWaitP50 float64 `json:"steady_wait_p50_us"`
	SteadyWaitP99 float64 `json:"steady_wait_p99_us"`
	// Visible* are the decoder-visible wait beyond scoring: the CYCLE's
	// round trip minus the daemon's scoring time, i.e. the data wait plus
	// the bookkeeping, locks, scheduling and socket around it (µs).
	VisibleP50 float64 `json:"visible_wait_p50_us"`
	VisibleP99 float64 `json:"visible_wait_p99_us"`
	VisibleMax float64 `json:"visible_wait_max_us"`
	// RTT and scoring per CYCLE as the client saw them (µs).
	RTTP50   float64            `json:"rtt_p50_us"`
	RTTP99   float64            `json:"rtt_p99_us"`
	ScoreP50 float64            `json:"score_p50_us"`
	Tiers    []SimTier          `json:"tiers"`
	Counters map[string]float64 `json:"counters"`
	Seconds  float64            `json:"seconds"`
	// ReadMode is the daemon's SSD read mode; Cgroup* describe the
	// memory-limited cgroup it ran in under --bypass-cache (empty: none),
	// its limit, peak use and the page cache charged to it at the end.
	ReadMode    string `json:"read_mode"`
	Cgroup      string `json:"cgroup,omitempty"`
	CgroupLimit int64  `json:"cgroup_limit_bytes,omitempty"`
	CgroupPeak  int64  `json:"cgroup_peak_bytes,omitempty"`
	CgroupCache int64  `json:"cgroup_page_cache_bytes,omitempty"`
}

// MemoryLimit is the memory cgroup limit of a --bypass-cache daemon: the
// host budget, every session's reserve (host memory on a host without GPUs)
// and its connection's staging region (shared memory, charged to the
// daemon), and 512 MiB for the daemon itself; page cache beyond it is
// reclaimed.
func (o *SimOptions) MemoryLimit() int64 {
	return o.HostBudget() + int64(o.Sessions)*(int64(o.reserveSlots())*o.pageBytes()+simStagingBytes) + 512<<20
}

// simStagingBytes is a connection's staging region (the daemon's default
// limits.staging_bytes); the simulator opens one connection per session.
const simStagingBytes = 64 << 20

func (o *SimOptions) readMode() string {
	if o.BypassCache {
		return "direct"
	}
	return "buffered"
}

type cgroupKey struct{}

// cgroupFrom is the cgroup RunSim wants the next daemon started in.
func cgroupFrom(ctx context.Context) *simCgroup {
	cg, _ := ctx.Value(cgroupKey{}).(*simCgroup)
	return cg
}

// SimTier is one tier's traffic during the decode phase.
type SimTier struct {
	Name    string  `json:"name"`
	Hits    uint64  `json:"hits"`
	Misses  uint64  `json:"misses"`
	HitRate float64 `json:"hit_rate"`
	Read    uint64  `json:"read_bytes"`
	Written uint64  `json:"written_bytes"`
}

// Launcher starts a flashmemd with the given TOML configuration (which
// names its socket) and returns a stop function that shuts it down.
type Launcher func(ctx context.Context, dir, configTOML, socket string) (stop func() error, err error)

// simConfig is the daemon configuration of one mode.
func simConfig(o *SimOptions, mode, dir string) (toml, socket, metrics string) {
	socket = filepath.Join(dir, "fm.sock")
	metrics = filepath.Join(dir, "metrics.sock")
	staging, bg, bgSSD := true, true, true
	switch mode {
	case ModeNoStaging:
		staging = false
	case ModeOnDemand:
		staging, bgSSD = false, false
	case ModeLRU:
		staging, bg = false, false
	}
	toml = fmt.Sprintf(`socket = %q
data_dir = %q
metrics = "unix:%s"
log_level = "warn"

[host]
budget_bytes = %d

[ssd]
read_mode = %q

[mover]
staging = %v
background_recall = %v
background_recall_ssd = %v
`, socket, filepath.Join(dir, "data"), metrics, o.HostBudget(), o.readMode(), staging, bg, bgSSD)
	if o.StageWorkers > 0 {
		toml += fmt.Sprintf("stage_workers = %d\n", o.StageWorkers)
	}
	if o.Model == SimModelLSA {
		toml += fmt.Sprintf(`
[indexer]
default_model = %q
trace = "trace"

[[indexer.random]]
name = %q
seed = 1
hidden = %d
rank = %d
heads = %d
head_dim = %d
target_layers = %d
`, SimModelLSA, SimModelLSA, simLSAHidden, simLSARank, simLSAHeads, simLSAHeadDim, simLSATargets)
	}
	return toml, socket, metrics
}

// ExecLauncher runs the flashmemd binary at path.
func ExecLauncher(path string, logw io.Writer) Launcher {
	return func(ctx context.Context, dir, cfg, socket string) (func() error, error) {
		cfgPath := filepath.Join(dir, "flashmemd.toml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			return nil, err
		}
		logPath := filepath.Join(dir, "flashmemd.log")
		lf, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(path, "--config", cfgPath)
		cmd.Stdout, cmd.Stderr = lf, lf
		if err := cmd.Start(); err != nil {
			lf.Close()
			return nil, fmt.Errorf("%w: start %s: %v", ErrDaemon, path, err)
		}
		if cg := cgroupFrom(ctx); cg != nil {
			if err := cg.add(cmd.Process.Pid); err != nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				lf.Close()
				return nil, fmt.Errorf("%w: moving flashmemd into %s: %v", ErrDaemon, cg, err)
			}
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait(); lf.Close() }()
		stop := func() error {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				return err
			case <-time.After(60 * time.Second):
				_ = cmd.Process.Kill()
				return fmt.Errorf("%w: flashmemd did not stop within 60 s", ErrDaemon)
			}
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			if c, err := net.Dial("unix", socket); err == nil {
				c.Close()
				return stop, nil
			}
			select {
			case err := <-exited:
				tail, _ := os.ReadFile(logPath)
				return nil, fmt.Errorf("%w: exited at start (%v): %s", ErrDaemon, err, lastLines(string(tail), 5))
			case <-ctx.Done():
				_ = stop()
				return nil, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				_ = stop()
				return nil, fmt.Errorf("%w: socket %s not up after 30 s", ErrDaemon, socket)
			}
		}
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], " | ")
}

// findFlashmemd looks for the daemon binary next to this executable, then
// on $PATH.
func findFlashmemd() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "flashmemd")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath("flashmemd")
	if err != nil {
		return "", fmt.Errorf("%w: no flashmemd next to flashmemctl or on $PATH (use --flashmemd PATH)", ErrUsage)
	}
	return p, nil
}

func simCmd(g *globals) *cobra.Command {
	o := DefaultSimOptions()
	var modes, bin, dir, device string
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Tiering simulator: many sessions replaying resident-set traces through flashmemd, per mover mode",
		Long: `sim starts flashmemd (the binary next to flashmemctl, on $PATH, or --flashmemd) once per mode on a
temporary socket and data directory, with a host budget of --host-share of all sessions' pages:

  lookahead   [mover] staging = true,  background_recall = true   (the design)
  no-staging  [mover] staging = false, background_recall = true   (each new selection recalled in the
              background from wherever it is, SSD included: LSA's one-cycle-late recall alone)
  on-demand   [mover] staging = false, background_recall_ssd = false  (the SSD tier read on demand:
              a page only on SSD is read when a cycle hands it out, the decoder waiting; pages in
              host memory are still recalled in the background)
  lru         [mover] staging = false, background_recall = false  (pages load only when a cycle hands them out)

Each session opens with the daemon's trace-replay model ("trace"), prefills --tokens tokens of
DeepSeek-V4-shaped pages, then decodes --cycles cycles concurrently with the others: CYCLE,
--cycle-time of decode, next CYCLE. Its keys make the daemon select, at cycle k, exactly the
trace's set k (a random --resident share of the pages, --churn of it replaced per cycle); the
pages the next cycle adds score above threshold one cycle early for --foresight of them, which
is what the indexer's lookahead ranking sees.

By default the daemons read SSD pages buffered, so pages read back may come from the page cache.
--bypass-cache makes them read with O_DIRECT ([ssd] read_mode = "direct") and, where the machine
has a memory cgroup this process may create (v2 memory.max, else v1 memory.limit_in_bytes), run
each daemon in one limited to the host budget + reserves + 512 MiB, so the page cache charged to
it cannot hold the tier's data; without one it says so and goes on with O_DIRECT alone.

A cycle is stalled when the decoder waited for recall: the daemon copied a page of the reply's
table synchronously (the reply's RecalledPages counter) or its WaitMicros (time the reply
waited for page data: the previous cycle's background recall still copying, and synchronous
loads) reached --stall. The decoder-visible wait beyond scoring (round trip minus
ScoreMicros: data, bookkeeping, scheduling, socket) is reported per mode beside it ("visible").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Modes = splitList(modes)
			dev, err := parseDevice(device)
			if err != nil {
				return err
			}
			o.Device = dev
			if err := o.validate(); err != nil {
				return err
			}
			var launch Launcher
			if cmd.Flags().Changed("socket") {
				launch = nil // the running daemon at --socket; its mover mode is whatever it was started with
			} else {
				if bin == "" {
					var err error
					if bin, err = findFlashmemd(); err != nil {
						return err
					}
				}
				launch = ExecLauncher(bin, cmd.ErrOrStderr())
			}
			res, err := RunSim(cmd.Context(), o, launch, g.socket, dir, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if g.asJSON {
				enc := newJSONLines(g.out)
				for _, r := range res {
					if err := enc.Encode(r); err != nil {
						return err
					}
				}
				return nil
			}
			return WriteSimTable(g.out, o, res)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Sessions, "sessions", o.Sessions, "concurrent sessions")
	f.IntVar(&o.Tokens, "tokens", o.Tokens, "context tokens per session")
	f.IntVar(&o.Layers, "layers", o.Layers, "KV layers per page (rows of 37,440 B)")
	f.IntVar(&o.Cycles, "cycles", o.Cycles, "decode cycles per session")
	f.Float64Var(&o.Resident, "resident", o.Resident, "share of pages in each cycle's resident set (besides sink and tail)")
	f.Float64Var(&o.Churn, "churn", o.Churn, "share of the resident set replaced per cycle")
	f.Float64Var(&o.Foresight, "foresight", o.Foresight, "share of newly selected pages whose score rises one cycle ahead (lookahead signal)")
	f.DurationVar(&o.CycleTime, "cycle-time", o.CycleTime, "decode time per cycle of 64 steps")
	f.Float64Var(&o.HostShare, "host-share", o.HostShare, "host budget as a share of all sessions' pages (above 1: room to spare, no SSD traffic)")
	f.DurationVar(&o.Stall, "stall", o.Stall, "recall wait at or above which a cycle counts as stalled")
	f.BoolVar(&o.SyncStalls, "sync-stalls", o.SyncStalls, "a cycle that loaded pages of its table synchronously is stalled whatever its wait (false: the wait alone decides)")
	f.Uint64Var(&o.Seed, "seed", o.Seed, "seed of the traces")
	f.IntVar(&o.ReserveSlots, "reserve-slots", 0, "reserve pages per session (default: 3 resident sets + 16)")
	f.BoolVar(&o.BypassCache, "bypass-cache", false, "keep the page cache out: daemons read SSD pages with O_DIRECT and run in a memory-limited cgroup where possible (default: buffered reads)")
	f.IntVar(&o.StageWorkers, "stage-workers", 0, "the daemons' [mover] stage_workers (0: their default)")
	f.DurationVar(&o.AdmitEvery, "admit-every", 0, "start session i's decode i × this after the first (0: all at once)")
	f.Int64Var(&o.HostBudgetBytes, "host-budget", 0, "host budget in bytes (overrides --host-share; the capacity benchmark keeps it fixed while adding sessions)")
	f.StringVar(&device, "device", "any", `reserve device: "any" (the daemon picks; a GPU where it has one), "host", or a GPU ordinal`)
	f.StringVar(&o.Model, "model", o.Model, `indexer model: "trace" (trace replay, tables checked) or "lsa" (published-dimension Memory Indexer, random weights, scored for real)`)
	f.StringVar(&modes, "modes", strings.Join(AllSimModes, ","), "modes to run")
	f.StringVar(&bin, "flashmemd", "", "flashmemd binary (default: next to flashmemctl, then $PATH)")
	f.StringVar(&dir, "dir", "", "directory for the daemons' sockets and data (default: a temporary one, removed)")
	return cmd
}

// parseDevice reads --device.
func parseDevice(s string) (uint32, error) {
	switch s {
	case "any":
		return proto.DeviceAny, nil
	case "host":
		return proto.DeviceHostOnly, nil
	}
	n, err := strconv.ParseUint(s, 10, 31)
	if err != nil {
		return 0, fmt.Errorf("%w: --device %q: want any, host or a GPU ordinal", ErrUsage, s)
	}
	return uint32(n), nil
}

// RunSim runs every mode of o. With a launcher it starts a daemon per mode
// under dir (a temporary directory if ""); without one it uses the daemon
// at socket for a single run labelled with the first mode.
func RunSim(ctx context.Context, o SimOptions, launch Launcher, socket, dir string, progress io.Writer) ([]SimResult, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "flashmem-sim-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	modes := o.Modes
	if launch == nil {
		modes = modes[:1]
	}
	var out []SimResult
	noted := false
	for _, mode := range modes {
		sock, metrics := socket, ""
		var stop func() error
		var cg *simCgroup
		if launch != nil && o.BypassCache {
			var note string
			cg, note = newSimCgroup(fmt.Sprintf("flashmem-sim-%d-%s", os.Getpid(), mode), o.MemoryLimit())
			if cg == nil && !noted {
				fmt.Fprintf(progress, "  sim: --bypass-cache without a memory cgroup (%s); SSD reads are still O_DIRECT, so no page read back comes from the page cache\n", note)
				noted = true
			}
		}
		if launch != nil {
			md := filepath.Join(dir, mode)
			if err := os.MkdirAll(md, 0o700); err != nil {
				return nil, err
			}
			var cfg string
			cfg, sock, metrics = simConfig(&o, mode, md)
			var err error
			lctx := ctx
			if cg != nil {
				lctx = context.WithValue(ctx, cgroupKey{}, cg)
				fmt.Fprintf(progress, "  sim %s: flashmemd in %s\n", mode, cg)
			}
			if stop, err = launch(lctx, md, cfg, sock); err != nil {
				if cg != nil {
					_ = cg.remove()
				}
				return nil, fmt.Errorf("mode %s: %w", mode, err)
			}
		}
		fmt.Fprintf(progress, "  sim %s: %d sessions × %d pages of %s, host budget %s\n", mode, o.Sessions, o.pages(), human(uint64(o.pageBytes())), human(uint64(o.HostBudget())))
		r, err := simMode(ctx, &o, mode, sock, metrics, progress)
		if r != nil && launch != nil {
			r.ReadMode = o.readMode()
		}
		if r != nil && cg != nil {
			r.Cgroup, r.CgroupLimit = cg.String(), cg.limit
			r.CgroupPeak, r.CgroupCache = cg.usage()
		}
		if stop != nil {
			if serr := stop(); err == nil && serr != nil {
				err = fmt.Errorf("%w: stopping: %v", ErrDaemon, serr)
			}
		}
		if cg != nil {
			if rerr := cg.remove(); err == nil && rerr != nil {
				fmt.Fprintf(progress, "  sim %s: %v\n", mode, rerr)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("mode %s: %w", mode, err)
		}
		out = append(out, *r)
	}
	return out, nil
}

func dialSim(ctx context.Context, socket string) (*proto.Client, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return proto.Dial(cctx, socket, &proto.Options{ClientName: "flashmemctl-sim"})
}

// simSession is one decoder session of the simulation.
type simSession struct {
	c      *proto.Client
	id     uint64
	trace  *simTrace // nil for --model lsa
	query  [][]byte  // --model lsa: the session's hidden state per target layer
	cycles []SimCycle
	mism   int
}

func simMode(ctx context.Context, o *SimOptions, mode, socket, metrics string, progress io.Writer) (*SimResult, error) {
	p := o.pages()
	k := o.resident()
	l := proto.Layout{ChunksPerPage: eval.ChunksPerPage, KeyBytes: eval.TraceKeyBytes, TargetLayers: 1, CycleSteps: eval.Tau,
		ReserveSlots: uint32(o.reserveSlots())}
	for range o.Layers {
		l.Layers = append(l.Layers, proto.LayerLayout{RowBytes: simRowBytes, Segments: []uint32{576, 8}})
	}
	change := int(math.Round(o.Churn * float64(k)))
	pol := proto.Policy{FirstKeep: 1, LastKeep: 1, KMax: uint32(k + 2), FallbackRatio: 1, Lookahead: uint32(max(32, 2*change))}
	keyBytes := uint64(eval.TraceKeyBytes)
	if o.Model == SimModelLSA {
		l.KeyBytes, l.TargetLayers = simLSAKeyBytes, simLSATargets
		keyBytes = simLSAKeyBytes * simLSATargets
		pol = proto.Policy{FallbackRatio: 1} // the daemon's LSA defaults otherwise
	}
	admin, err := dialSim(ctx, socket)
	if err != nil {
		return nil, err
	}
	defer admin.Close()

	ss := make([]*simSession, o.Sessions)
	var placeMu sync.Mutex
	placed := map[string]int{} // where reserves are → sessions
	defer func() {
		for _, s := range ss {
			if s != nil && s.c != nil {
				if s.id != 0 {
					_ = s.c.CloseSession(context.Background(), s.id, true)
				}
				s.c.Close()
			}
		}
	}()
	// Prefill, a few sessions at a time.
	t0 := time.Now()
	pp := newProgress(progress, int64(o.Sessions), "sim "+mode+": sessions prefilled")
	if err := forEach(ctx, o.Sessions, 4, tick(pp, func(i int) error {
		r := rand.New(rand.NewPCG(o.Seed, uint64(i)))
		s := &simSession{}
		if o.Model == SimModelLSA {
			s.query = lsaQuery(r)
		} else {
			s.trace = newSimTrace(r, o)
		}
		ss[i] = s
		c, err := dialSim(ctx, socket)
		if err != nil {
			return err
		}
		s.c = c
		op, err := c.Open(ctx, &proto.Open{Model: o.Model, Layout: l, Policy: pol, Device: o.Device})
		if err != nil {
			return err
		}
		s.id = op.Session
		where := "host memory"
		if op.Region.Kind == proto.RegionCUDA {
			where = fmt.Sprintf("GPU %d", op.Region.Device)
		}
		placeMu.Lock()
		placed[where]++
		placeMu.Unlock()
		op.Region.Close() // the simulator reads no page bytes; the daemon keeps its own mapping
		var keys, kb []byte
		if s.trace != nil {
			keys = s.trace.keys()
		}
		chunks := uint64(p * eval.ChunksPerPage)
		const batch = 1024
		for first := uint64(0); first < chunks; first += batch {
			n := min(batch, chunks-first)
			size, _ := l.PayloadBytes(n)
			st := c.Staging()
			if uint64(len(st)) < size {
				return fmt.Errorf("staging region of %d B is smaller than %d chunks", len(st), n)
			}
			synth.FillAppend(&l, o.Seed+uint64(i), first, n, st[:size])
			if keys != nil {
				kb = keys[first*keyBytes : (first+n)*keyBytes]
			} else {
				kb = slices.Grow(kb[:0], int(n*keyBytes))[:n*keyBytes]
				lsaKeys(r, kb)
			}
			if _, err := c.Append(ctx, &proto.Append{Session: s.id, FirstChunk: first, Count: uint32(n), Length: size, Keys: kb}); err != nil {
				return err
			}
		}
		return nil
	})); err != nil {
		return nil, fmt.Errorf("prefill: %w", err)
	}
	// Let the spiller bring the host mirror inside its budget and finish
	// writing, so the decode phase's SSD traffic is the decode's own.
	var lastWritten uint64
	for deadline := time.Now().Add(2 * time.Minute); ; {
		st, err := admin.Status(ctx)
		if err != nil {
			return nil, err
		}
		h, w := tierOf(st, "host"), tierOf(st, "ssd").WrittenBytes
		if (h.CapacityBytes == 0 || h.UsedBytes <= h.CapacityBytes) && w == lastWritten || time.Now().After(deadline) {
			break
		}
		lastWritten = w
		time.Sleep(300 * time.Millisecond)
	}
	if o.BypassCache {
		// Write back what prefill left dirty, so the decode phase neither
		// waits on that writeback nor finds reclaim in the daemon's
		// memory cgroup stuck behind it: its page cache is then clean and
		// dropped at once when the cgroup needs the room.
		syscall.Sync()
	}
	fmt.Fprintf(progress, "  sim %s: prefill %.1f s\n", mode, time.Since(t0).Seconds())
	st0, err := admin.Status(ctx)
	if err != nil {
		return nil, err
	}
	m0 := scrapeMetrics(metrics)
	t1 := time.Now()
	pp.done()
	dp := newProgress(progress, int64(o.Sessions), "sim "+mode+": sessions decoded")
	err = forEach(ctx, o.Sessions, o.Sessions, tick(dp, func(i int) error {
		return ss[i].decode(ctx, o, i)
	}))
	dp.done()
	if err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	secs := time.Since(t1).Seconds()
	st1, err := admin.Status(ctx)
	if err != nil {
		return nil, err
	}
	m1 := scrapeMetrics(metrics)
	res := &SimResult{Mode: mode, Sessions: o.Sessions, HostBudget: o.HostBudget(), KVBytes: int64(o.Sessions) * int64(p) * o.pageBytes(), Seconds: secs}
	var waits, steady, rtts, scores, visible []time.Duration
	var copied, table, later, laterStalled int
	for _, s := range ss {
		res.Mismatch += s.mism
		for k, c := range s.cycles {
			stalled := (o.SyncStalls && c.SyncLoaded > 0) || c.Wait >= o.Stall
			if k == 0 {
				// The end of prefill: the fresh reserve holds nothing, so the
				// sink and tail are always copied before the first reply.
				if stalled {
					res.FirstStalls++
				}
				continue
			}
			res.Cycles++
			if k == 1 && stalled {
				res.FirstSetStalls++
			}
			if k >= 3 {
				later++
				if stalled {
					laterStalled++
				}
			}
			if stalled {
				if res.StallsByCycle == nil {
					res.StallsByCycle = map[int]int{}
				}
				res.StallsByCycle[k]++
			}
			waits = append(waits, c.Wait)
			if k >= 3 {
				steady = append(steady, c.Wait)
			}
			rtts = append(rtts, c.RTT)
			scores = append(scores, c.Score)
			visible = append(visible, max(0, c.RTT-c.Score))
			res.SyncPages += c.SyncLoaded
			// Without background recall the queued pages are counted by
			// the daemon but never copied; only the synchronous loads are.
			if mode == ModeLRU {
				copied += c.SyncLoaded
			} else {
				copied += c.Recalled
			}
			table += c.Table
			if stalled {
				res.Stalled++
			}
		}
	}
	res.ReserveHit = 1 - float64(copied)/float64(max(table, 1))
	res.StallFree = float64(res.Cycles-res.Stalled) / float64(max(res.Cycles, 1))
	res.StallFreeSteady = float64(later-laterStalled) / float64(max(later, 1))
	res.WaitP50 = float64(pct(waits, 50).Microseconds())
	res.WaitP99 = float64(pct(waits, 99).Microseconds())
	res.WaitMax = float64(pct(waits, 100).Microseconds())
	res.SteadyWaitP50 = float64(pct(steady, 50).Microseconds())
	res.SteadyWaitP99 = float64(pct(steady, 99).Microseconds())
	res.SteadyCycles = len(steady)
	res.VisibleP50 = float64(pct(visible, 50).Microseconds())
	res.VisibleP99 = float64(pct(visible, 99).Microseconds())
	res.VisibleMax = float64(pct(visible, 100).Microseconds())
	res.RTTP50 = float64(pct(rtts, 50).Microseconds())
	res.RTTP99 = float64(pct(rtts, 99).Microseconds())
	res.ScoreP50 = float64(pct(scores, 50).Microseconds())
	var where []string
	for _, w := range slices.Sorted(maps.Keys(placed)) {
		where = append(where, fmt.Sprintf("%s (%d sessions)", w, placed[w]))
	}
	res.ReserveKind = strings.Join(where, ", ")
	res.ReserveBytes = int64(tierOf(st1, "reserve").UsedBytes)
	for _, name := range []string{"reserve", "host", "ssd"} {
		a, b := tierOf(st0, name), tierOf(st1, name)
		t := SimTier{Name: name, Hits: b.Hits - a.Hits, Misses: b.Misses - a.Misses, Read: b.ReadBytes - a.ReadBytes, Written: b.WrittenBytes - a.WrittenBytes}
		if t.Hits+t.Misses > 0 {
			t.HitRate = float64(t.Hits) / float64(t.Hits+t.Misses)
		}
		res.Tiers = append(res.Tiers, t)
		if name == "reserve" && res.Cycles > 0 {
			// Not counted: each session's first table (sink, tail) and first
			// selection, which fill its empty reserve once.
			first := float64(o.Sessions * (k + 2))
			res.PagesPerCycle = max(0, float64(t.Written)/float64(o.pageBytes())-first) / float64(res.Cycles)
		}
	}
	res.Counters = map[string]float64{}
	for _, c := range []string{"staged", "staged_used", "staged_unused", "brought_back", "spills"} {
		res.Counters[c] = st1.Counters[c] - st0.Counters[c]
	}
	if m0 != nil && m1 != nil {
		res.Counters["prefetch_late"] = m1[`flashmem_prefetch_pages_total{outcome="late"}`] - m0[`flashmem_prefetch_pages_total{outcome="late"}`]
		for _, path := range []string{"pinned", "staged"} {
			k := `flashmem_gpu_reserve_writes_total{path="` + path + `"}`
			res.Counters["gpu_writes_"+path] = m1[k] - m0[k]
		}
		for _, k := range []string{"seconds", "batches"} {
			key := `flashmem_indexer_gpu_cycle_` + k + `_total{model="` + SimModelLSA + `"}`
			res.Counters["gpu_cycle_"+k] = m1[key] - m0[key]
		}
	}
	if res.Mismatch > 0 {
		return res, fmt.Errorf("%d cycles returned a page table other than the trace's previous set plus sink and tail", res.Mismatch)
	}
	return res, nil
}

// decode runs one session's cycles: CYCLE, compare the table with the
// trace, release the previous lease, decode for CycleTime.
func (s *simSession) decode(ctx context.Context, o *SimOptions, i int) error {
	r := rand.New(rand.NewPCG(o.Seed^0x5eed, uint64(i)))
	// Stagger the sessions over one cycle, as independent decoders are.
	if o.CycleTime > 0 {
		if err := sleepCtx(ctx, time.Duration(r.Int64N(int64(o.CycleTime)))); err != nil {
			return err
		}
	}
	if err := sleepCtx(ctx, time.Duration(i)*o.AdmitEvery); err != nil {
		return err
	}
	t := s.trace
	last := uint32(o.pages() - 1)
	var lease uint64
	for k := range o.Cycles {
		queries, pos := s.query, uint64(o.pages()*eval.ChunksPerPage*eval.TokensPerChunk+k*eval.Tau)
		if t != nil {
			queries, pos = eval.TraceQuery(k).Layers, uint64(k)
		}
		t0 := time.Now()
		res, err := s.c.Cycle(ctx, []proto.CycleEntry{{Session: s.id, Step: uint64(k * eval.Tau), Position: pos, Queries: queries}})
		rtt := time.Since(t0)
		if err != nil {
			return err
		}
		cr := res[0]
		if cr.Err != nil {
			return fmt.Errorf("session %d cycle %d: %w", s.id, k, cr.Err)
		}
		// The table is the previous cycle's set plus sink and tail (trace model).
		if t != nil {
			want := []uint32{0}
			if k > 0 {
				want = append(want, t.sets[k-1]...)
			}
			want = append(want, last)
			got := make([]uint32, len(cr.Pages))
			for j, p := range cr.Pages {
				got[j] = p.Page
			}
			if !slices.Equal(got, want) {
				s.mism++
			}
		}
		s.cycles = append(s.cycles, SimCycle{RTT: rtt, Score: time.Duration(cr.Counters.ScoreMicros) * time.Microsecond,
			Wait:     time.Duration(cr.Counters.WaitMicros) * time.Microsecond,
			Recalled: int(cr.Counters.RecalledPages), SyncLoaded: int(cr.Counters.RecalledPages), Table: len(cr.Pages)})
		if lease != 0 {
			if err := s.c.Release(ctx, lease); err != nil {
				return err
			}
		}
		lease = cr.Lease
		if err := sleepCtx(ctx, o.CycleTime); err != nil {
			return err
		}
	}
	if lease != 0 {
		return s.c.Release(ctx, lease)
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// forEach runs f(0..n-1) on up to par goroutines and returns the first error.
func forEach(ctx context.Context, n, par int, f func(int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	sem := make(chan struct{}, par)
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
					cancel()
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

func tierOf(st *proto.StatusReply, name string) proto.TierStatus {
	for _, t := range st.Tiers {
		if t.Name == name {
			return t
		}
	}
	return proto.TierStatus{}
}

// scrapeMetrics reads the daemon's /metrics over its unix socket into
// "name{labels}" → value; nil when there is none.
func scrapeMetrics(sock string) map[string]float64 {
	if sock == "" {
		return nil
	}
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	resp, err := cl.Get("http://flashmemd/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// WriteSimTable prints one row per mode.
func WriteSimTable(w io.Writer, o SimOptions, res []SimResult) error {
	if len(res) == 0 {
		return errors.New("no results")
	}
	r0 := res[0]
	fmt.Fprintf(w, "\n%d sessions × %d tokens (%s of KV), host budget %s (%.0f %%), %d cycles each,\n",
		o.Sessions, o.Tokens, human(uint64(r0.KVBytes)), human(uint64(r0.HostBudget)), 100*o.HostShare, o.Cycles)
	stall := "sync load or wait"
	if !o.SyncStalls {
		stall = "wait"
	}
	fmt.Fprintf(w, "resident %.0f %% + sink/tail, churn %.0f %%/cycle, foresight %.0f %%, %s decode per cycle;\nstall = %s ≥ %s (--json for every number)\n\n",
		100*o.Resident, 100*o.Churn, 100*o.Foresight, o.CycleTime, stall, o.Stall)
	// Three tables, so each fits 100 columns: stalls, latency, tiers.
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "mode\tcycles\tstall-free\tstalls (at cycle 1)\tsync pages\tpages/cycle")
	for _, r := range res {
		fmt.Fprintf(tw, "%s\t%d\t%.4f\t%d (%d)\t%d\t%.1f\n", r.Mode, r.Cycles, r.StallFree, r.Stalled, r.FirstSetStalls, r.SyncPages, r.PagesPerCycle)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "mode\twait p50 µs\tp99\tmax\tvisible p50 µs\tp99\tmax\tcycle RTT p50 µs\tp99")
	for _, r := range res {
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\n", r.Mode, r.WaitP50, r.WaitP99, r.WaitMax, r.VisibleP50, r.VisibleP99, r.VisibleMax, r.RTTP50, r.RTTP99)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "mode\thit reserve/host/ssd\trsv written\thost read\tssd read\tssd written\tstaged/used/late")
	for _, r := range res {
		t := map[string]SimTier{}
		for _, x := range r.Tiers {
			t[x.Name] = x
		}
		fmt.Fprintf(tw, "%s\t%.3f/%.3f/%.3f\t%s\t%s\t%s\t%s\t%.0f/%.0f/%.0f\n", r.Mode, r.ReserveHit, t["host"].HitRate, t["ssd"].HitRate,
			human(t["reserve"].Written), human(t["host"].Read), human(t["ssd"].Read), human(t["ssd"].Written),
			r.Counters["staged"], r.Counters["staged_used"], r.Counters["prefetch_late"])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range res {
		if r.ReadMode != "" {
			cg := "no memory cgroup"
			if r.Cgroup != "" {
				cg = fmt.Sprintf("%s: peak %s, page cache at the end %s", r.Cgroup, human(uint64(r.CgroupPeak)), human(uint64(r.CgroupCache)))
			}
			fmt.Fprintf(w, "%s: SSD reads %s; %s.\n", r.Mode, r.ReadMode, cg)
		}
	}
	fmt.Fprintf(w, "\ncycles: decode cycles after each session's first (which loads sink and tail into its empty reserve: %d of %d sessions waited there in the first mode).\n", r0.FirstStalls, r0.Sessions)
	for _, r := range res {
		if p, st := r.Counters["gpu_writes_pinned"], r.Counters["gpu_writes_staged"]; p+st > 0 {
			fmt.Fprintf(w, "%s: page writes into GPU reserves: %.0f straight from the pinned mirror, %.0f staged (pages from SSD).\n", r.Mode, p, st)
		}
		if b := r.Counters["gpu_cycle_batches"]; b > 0 {
			fmt.Fprintf(w, "%s: GPU scoring (whole indexer cycle on the GPU): %.0f batches, %.3f ms of GPU time per batch, %.3f ms per decode cycle of a session.\n",
				r.Mode, b, 1e3*r.Counters["gpu_cycle_seconds"]/b, 1e3*r.Counters["gpu_cycle_seconds"]/float64(max(r.Cycles+r.Sessions, 1)))
		}
		if len(r.StallsByCycle) > 0 {
			ks := slices.Sorted(maps.Keys(r.StallsByCycle))
			var b strings.Builder
			for _, k := range ks {
				fmt.Fprintf(&b, " %d:%d", k, r.StallsByCycle[k])
			}
			fmt.Fprintf(w, "%s: stalled sessions by cycle:%s\n", r.Mode, b.String())
		}
		fmt.Fprintf(w, "%s: decode phase %.1f s; wait from cycle 3 on (%d cycles): p50 %.0f µs, p99 %.0f µs.\n", r.Mode, r.Seconds, r.SteadyCycles, r.SteadyWaitP50, r.SteadyWaitP99)
		fmt.Fprintf(w, "%s: reserves in %s hold %s = %.1f %% of the %s of KV (%d slots of %s per session); scoring p50 %.0f µs per CYCLE.\n",
			r.Mode, r.ReserveKind, human(uint64(r.ReserveBytes)), 100*float64(r.ReserveBytes)/float64(max(r.KVBytes, 1)), human(uint64(r.KVBytes)),
			o.reserveSlots(), human(uint64(o.pageBytes())), r.ScoreP50)
	}
	fmt.Fprintln(w, "wait: time the reply waited for page data (the previous recall still copying, synchronous loads; WaitMicros); visible: CYCLE round trip minus scoring, what the decoder waited beyond scoring (data, bookkeeping, scheduling, socket); RTT: CYCLE round trip incl. scoring; pages/cycle: pages copied into a session's reserve per cycle once its first selection is in.")
	fmt.Fprintln(w, "hit reserve: table pages already in the reserve (rsv written: bytes copied into reserves); hit host / ssd: page reads each tier served (daemon STATUS); late: recall pages read from SSD (/metrics).")
	return nil
}
