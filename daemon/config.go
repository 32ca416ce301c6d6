package daemon

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/flashmemory/flashmemory/indexer"
)

// Config is everything flashmemd needs to run. The zero value is not usable;
// start from DefaultConfig, which works on any Linux machine with no file,
// flag or environment variable at all.
type Config struct {
	// Socket is the control socket's path.
	Socket string `toml:"socket"`
	// DataDir holds the SSD tier (Badger) and persisted sessions.
	DataDir string `toml:"data_dir"`
	// Metrics is where /metrics and /healthz are served: "host:port" on
	// loopback, "unix:/path" for a unix socket, or "" / "off" for none.
	Metrics string `toml:"metrics"`
	// AllowedGroups may connect besides the daemon's own uid (and root). A
	// peer is a member when its process holds the group, as primary or
	// supplementary group, at connect (SO_PEERGROUPS, else /proc/PID/status).
	AllowedGroups []string `toml:"allowed_groups"`
	// SocketGroup owns the control socket the daemon binds (mode 0660), so
	// members of allowed_groups can connect; "" means the first of
	// allowed_groups (none: the daemon's own group). Under socket activation
	// the unit's SocketGroup= applies instead.
	SocketGroup string `toml:"socket_group"`
	// AdminGroups may see, inspect and evict every user's sessions (root
	// always may); others see only their own uid's sessions.
	AdminGroups []string `toml:"admin_groups"`
	// LogLevel is debug, info, warn or error; LogFormat text or json.
	LogLevel  string `toml:"log_level"`
	LogFormat string `toml:"log_format"`

	Limits  Limits        `toml:"limits"`
	Host    HostConfig    `toml:"host"`
	SSD     SSDConfig     `toml:"ssd"`
	Indexer IndexerConfig `toml:"indexer"`
	Mover   MoverConfig   `toml:"mover"`
	GPU     GPUConfig     `toml:"gpu"`
	// Cluster, when present, makes this daemon a member of a replicated
	// cluster (docs/cluster.md); absent, it is a single host.
	Cluster *ClusterConfig `toml:"cluster"`

	// ShutdownTimeout bounds the graceful part of SIGTERM handling.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
}

// Limits bound what one client or the whole daemon may ask for. A request
// past a limit gets a LimitExceeded error frame; nothing else is affected.
type Limits struct {
	MaxSessions        int `toml:"max_sessions"`
	MaxSessionsPerConn int `toml:"max_sessions_per_conn"`
	// MaxSessionsPerUID and MaxConnsPerUID bound what one user may hold, so
	// one uid can never take every slot of max_sessions / max_conns.
	MaxSessionsPerUID int `toml:"max_sessions_per_uid"`
	MaxConns          int `toml:"max_conns"`
	MaxConnsPerUID    int `toml:"max_conns_per_uid"`
	// AdminReservedConns of the max_conns slots only root and admin_groups
	// may take (they may also exceed max_conns_per_uid by as many), so an
	// operator can connect while other users hold every other slot.
	AdminReservedConns int `toml:"admin_reserved_conns"`
	// HandshakeTimeout closes a connection that has not completed HELLO this
	// long after connecting; IdleTimeout closes one that holds no session
	// and no lease and has sent nothing for this long (0 = never).
	HandshakeTimeout Duration `toml:"handshake_timeout"`
	IdleTimeout      Duration `toml:"idle_timeout"`
	// FrameTimeout closes a connection that stops in the middle of a frame:
	// once a frame's first bytes arrived, the rest must within this time.
	FrameTimeout  Duration `toml:"frame_timeout"`
	MaxFrameBytes uint32   `toml:"max_frame_bytes"`
	StagingBytes  int64    `toml:"staging_bytes"`
	// MaxSessionBytes caps one session's full KV history (all pages, all
	// layers); MaxReserveBytes caps one session's reserve region.
	MaxSessionBytes int64 `toml:"max_session_bytes"`
	MaxReserveBytes int64 `toml:"max_reserve_bytes"`
	// MaxHostReserveBytes caps all reserve regions in host memory together
	// (hosts without CUDA devices); 0 means a quarter of the machine's
	// available memory at start.
	MaxHostReserveBytes int64 `toml:"max_host_reserve_bytes"`
	// MaxLayers and MaxRowBytes reject absurd layouts before any allocation.
	MaxLayers   int    `toml:"max_layers"`
	MaxRowBytes uint32 `toml:"max_row_bytes"`
	// LeaseTimeout reclaims a lease its client never released while still
	// connected; a dead connection's leases are reclaimed at once.
	LeaseTimeout Duration `toml:"lease_timeout"`
	// DetachedTTL is how long a persisted session whose connection ended
	// stays in host memory before it is flushed and kept on SSD only
	// (0 = until shutdown).
	DetachedTTL Duration `toml:"detached_ttl"`
}

// HostConfig sizes the host mirror.
type HostConfig struct {
	// BudgetBytes is the host mirror's budget; 0 means a quarter of the
	// machine's available memory at start.
	BudgetBytes int64 `toml:"budget_bytes"`
}

// SSDConfig tunes the Badger tier.
type SSDConfig struct {
	// SyncWrites makes every page write durable before it is acknowledged.
	// Persisted sessions are always synced on PERSIST and on shutdown.
	SyncWrites bool `toml:"sync_writes"`
	// GCInterval is how often the journal's segments are checked for
	// compaction (writes also start a round once garbage accumulates).
	GCInterval Duration `toml:"gc_interval"`
	// MinFreeBytes is the free space the SSD tier's filesystem must keep:
	// writes that would leave less fail with NO_SPACE (0: 32 MiB).
	MinFreeBytes int64 `toml:"min_free_bytes"`
	// ReadMode is how pages are read back: "direct" (default: O_DIRECT, so
	// the page cache never holds a second copy of the tier and a read costs
	// what the disk costs; where the filesystem refuses it, buffered with
	// one log line) or "buffered" (through the page cache).
	ReadMode string `toml:"read_mode"`
	// ReadQueueDepth bounds O_DIRECT reads in flight (0: 32, the best
	// measured on a virtio disk; docs/benchmarks.md); staging may use all
	// of it (with stage_workers that high) while no recall reads from SSD,
	// half otherwise.
	ReadQueueDepth int `toml:"read_queue_depth"`
}

// IndexerConfig registers Memory-Indexer models and the default policy.
type IndexerConfig struct {
	// Models are safetensors files registered under names sessions use.
	Models []ModelConfig `toml:"models"`
	// Random registers models with random weights built from a seed, for
	// tests and the demo.
	Random []RandomModelConfig `toml:"random"`
	// Text registers text-mode models (indexer/textmode): sessions send
	// per-chunk text keys and a text query per cycle. An entry without a path
	// is the default model embedded in the binary.
	Text []TextModelConfig `toml:"text"`
	// Trace names the trace-replay model (eval.TraceScorer) that the tiering
	// simulator drives; "" registers none.
	Trace string `toml:"trace"`
	// DefaultModel is used by sessions that name none.
	DefaultModel string `toml:"default_model"`
	// Policy defaults; sessions may override per open.
	FirstKeep     int     `toml:"first_keep"`
	LastKeep      int     `toml:"last_keep"`
	KMax          int     `toml:"kmax"`
	KMaxRatio     float64 `toml:"kmax_ratio"`
	FallbackRatio float64 `toml:"fallback_ratio"`
	Lookahead     int     `toml:"lookahead"`
	// Expand is the multi-hop expansion of every session's cycles: "auto"
	// (or empty: on for text-mode models, off for LSA models), "on" or "off".
	Expand string `toml:"expand"`
}

// ModelConfig names a weights file.
type ModelConfig struct {
	Name     string `toml:"name"`
	Path     string `toml:"path"`
	Ensemble string `toml:"ensemble"` // max (default) or mean
	Variant  string `toml:"variant"`  // float (default) or fp8q
}

// TextModelConfig names a text-mode model file; an empty Path is the
// embedded default (models/textmode-default.safetensors).
type TextModelConfig struct {
	Name string `toml:"name"`
	Path string `toml:"path"`
}

// RandomModelConfig describes a model with random weights.
type RandomModelConfig struct {
	Name         string `toml:"name"`
	Seed         int64  `toml:"seed"`
	Hidden       int    `toml:"hidden"`
	Rank         int    `toml:"rank"`
	Heads        int    `toml:"heads"`
	HeadDim      int    `toml:"head_dim"`
	TargetLayers int    `toml:"target_layers"`
}

// MoverConfig sizes the background recall and staging workers and says
// which of the two prefetches run. Both on is the design; the other
// combinations exist to measure what each one buys (flashmemctl sim):
// without staging, pages the selection needs are read from SSD when
// recalled; without background recall too, every page is loaded only when
// a cycle hands it to the decoder (plain LRU caching).
type MoverConfig struct {
	Workers int `toml:"workers"`
	// Staging brings the indexer's lookahead candidates from SSD into the
	// host mirror ahead of need.
	Staging *bool `toml:"staging"`
	// BackgroundRecall copies each cycle's new selection into the reserve
	// while the decoder still uses the previous one (LSA's one-cycle-late
	// application).
	BackgroundRecall *bool `toml:"background_recall"`
	// BackgroundRecallSSD lets background recall read pages that are only
	// on SSD (default true). False leaves them to the cycle that hands them
	// out, where the decoder waits for the read: the SSD tier read on
	// demand, as LMCache and HiCache read their disk tiers; host-memory
	// pages are still recalled in the background (flashmemctl sim's
	// on-demand mode).
	BackgroundRecallSSD *bool `toml:"background_recall_ssd"`
	// StageWorkers is how many staging reads run at once at most (0: 16);
	// staging halves it while the disk is the bottleneck.
	StageWorkers int `toml:"stage_workers"`
	// StageBytes bounds the lookahead candidates queued and in flight, in
	// bytes (0: 256 MiB); the best-ranked are kept.
	StageBytes int64 `toml:"stage_bytes"`
}

func (m MoverConfig) staging() bool          { return m.Staging == nil || *m.Staging }
func (m MoverConfig) backgroundRecall() bool { return m.BackgroundRecall == nil || *m.BackgroundRecall }
func (m MoverConfig) backgroundRecallSSD() bool {
	return m.BackgroundRecallSSD == nil || *m.BackgroundRecallSSD
}

// GPUConfig says whether reserves live in GPU memory and how much of it
// they may take.
type GPUConfig struct {
	// Mode "auto" puts session reserves on the host's GPUs when NVML finds
	// some and the binary was built with CUDA (scripts/build-cuda.sh);
	// otherwise, and with "off", reserves stay in host memory (memfd).
	Mode string `toml:"mode"`
	// ReserveFraction is the share of each GPU's free memory at start (after
	// HeadroomBytes) that the reserves of its sessions may take together.
	ReserveFraction float64 `toml:"reserve_fraction"`
	// HeadroomBytes stays free on each GPU for the decoder's own allocations
	// (weights, activations) that may start after the daemon.
	HeadroomBytes int64 `toml:"headroom_bytes"`
	// PinnedMirror page-locks the host mirror for CUDA (cuMemHostRegister) when
	// sessions can have GPU reserves, so recalls copy by DMA straight from the
	// mirror (53 GB/s on an H100 against 3-15 for pageable memory). Pinned
	// memory cannot be swapped: the host budget must fit in RAM.
	PinnedMirror bool `toml:"pinned_mirror"`
	// Scorer "auto" scores LSA models (128-dim index heads) on the first
	// GPU in CUDA builds, keeping a copy of each session's index keys in its
	// memory (about 132 B per chunk and target layer); "off" keeps scoring
	// on the CPU. Text-mode and trace models always score on the CPU.
	Scorer string `toml:"scorer"`
}

// GPU modes.
const (
	GPUAuto = "auto"
	GPUOff  = "off"
)

// Duration is a time.Duration that reads "5s" style strings from TOML.
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// ErrConfig reports an invalid configuration value, file or flag.
var ErrConfig = errors.New("invalid configuration")

// DefaultConfig returns the embedded defaults: a socket under
// $XDG_RUNTIME_DIR (or /run/flashmemd), data under $XDG_DATA_HOME (or
// /var/lib/flashmemd), a host budget from the machine's memory and a random
// demo model, the embedded text-mode model ("text") and the trace-replay
// model ("trace"), so the daemon runs with no configuration at all.
func DefaultConfig() Config {
	runDir := "/run/flashmemd"
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		runDir = filepath.Join(d, "flashmemd")
	}
	dataDir := "/var/lib/flashmemd"
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		dataDir = filepath.Join(d, "flashmemd")
	} else if os.Geteuid() != 0 {
		if h, err := os.UserHomeDir(); err == nil {
			dataDir = filepath.Join(h, ".local", "share", "flashmemd")
		}
	}
	return Config{
		Socket:    filepath.Join(runDir, "flashmemd.sock"),
		DataDir:   dataDir,
		Metrics:   "127.0.0.1:9464",
		LogLevel:  "info",
		LogFormat: "text",
		Limits: Limits{
			MaxSessions:        1024,
			MaxSessionsPerConn: 256,
			MaxSessionsPerUID:  512,
			MaxConns:           256,
			MaxConnsPerUID:     64,
			AdminReservedConns: 8,
			HandshakeTimeout:   Duration(5 * time.Second),
			IdleTimeout:        Duration(10 * time.Minute),
			FrameTimeout:       Duration(30 * time.Second),
			MaxFrameBytes:      16 << 20,
			StagingBytes:       64 << 20,
			MaxSessionBytes:    64 << 30,
			MaxReserveBytes:    16 << 30,
			MaxLayers:          256,
			MaxRowBytes:        16 << 20,
			LeaseTimeout:       Duration(5 * time.Minute),
			DetachedTTL:        Duration(30 * time.Minute),
		},
		SSD:   SSDConfig{GCInterval: Duration(5 * time.Minute)},
		Mover: MoverConfig{Workers: 4},
		GPU:   GPUConfig{Mode: GPUAuto, ReserveFraction: 0.5, HeadroomBytes: 2 << 30, PinnedMirror: true, Scorer: GPUAuto},
		Indexer: IndexerConfig{
			DefaultModel:  "demo",
			Random:        []RandomModelConfig{{Name: "demo", Seed: 1, Hidden: 512, Rank: 128, Heads: 16, HeadDim: 128, TargetLayers: 3}},
			Text:          []TextModelConfig{{Name: "text"}},
			Trace:         "trace",
			FirstKeep:     128,
			LastKeep:      2048,
			KMaxRatio:     0.10,
			FallbackRatio: 0.5,
			Lookahead:     32,
		},
		ShutdownTimeout: Duration(30 * time.Second),
	}
}

// LoadConfigFile merges a TOML file over cfg. Unknown keys are errors: a typo
// in a budget must not silently fall back to a default.
func LoadConfigFile(cfg *Config, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			return fmt.Errorf("%w: %s: %s", ErrConfig, path, unknownKeys(sm))
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return fmt.Errorf("%w: %s:%d:%d: %v", ErrConfig, path, row, col, de)
		}
		return fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
	}
	return nil
}

// ApplyEnv overrides cfg from FLASHMEMD_* environment variables.
func ApplyEnv(cfg *Config, getenv func(string) string) error {
	if v := getenv("FLASHMEMD_SOCKET"); v != "" {
		cfg.Socket = v
	}
	if v := getenv("FLASHMEMD_DATA_DIR"); v != "" {
		cfg.DataDir = v
	}
	if v := getenv("FLASHMEMD_METRICS"); v != "" {
		cfg.Metrics = v
	}
	if v := getenv("FLASHMEMD_LOG_LEVEL"); v != "" {
		cfg.LogLevel = v
	}
	if v := getenv("FLASHMEMD_HOST_BUDGET"); v != "" {
		n, err := ParseBytes(v)
		if err != nil {
			return fmt.Errorf("%w: FLASHMEMD_HOST_BUDGET: %v", ErrConfig, err)
		}
		cfg.Host.BudgetBytes = n
	}
	return nil
}

// ParseBytes reads sizes such as "512MiB", "4G" or "1048576".
func ParseBytes(s string) (int64, error) {
	orig := s
	s = strings.TrimSpace(s)
	mult := int64(1)
	units := []struct {
		suf string
		m   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1}}
	for _, u := range units {
		if strings.HasSuffix(s, u.suf) {
			mult = u.m
			s = strings.TrimSpace(strings.TrimSuffix(s, u.suf))
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not a size: %s", orig, sizeUnits)
	}
	return n * mult, nil
}

// sizeUnits says what ParseBytes accepts.
const sizeUnits = "use a whole number of bytes with an optional unit B, K or KiB, M or MiB, G or GiB, T or TiB (such as 512MiB or 8GiB)"

// unknownKeys names each unknown table or key of a strict TOML decode, with
// its line, and where the known ones are listed.
func unknownKeys(sm *toml.StrictMissingError) string {
	var parts []string
	for _, de := range sm.Errors {
		row, _ := de.Position()
		key := strings.Join(de.Key(), ".")
		if strings.Contains(de.Error(), "missing table") {
			parts = append(parts, fmt.Sprintf("line %d: unknown table [%s] (tables: %s)", row, key, strings.Join(configTables(), ", ")))
		} else {
			parts = append(parts, fmt.Sprintf("line %d: unknown key %s", row, key))
		}
	}
	return strings.Join(parts, "; ") + "; systemd/flashmemd.toml lists every table and key with its default"
}

// configTables lists the TOML tables of Config.
func configTables() []string {
	var out []string
	t := reflect.TypeOf(Config{})
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "" || name == "-" {
			continue
		}
		switch f.Type.Kind() {
		case reflect.Struct:
			out = append(out, "["+name+"]")
		case reflect.Slice:
			if f.Type.Elem().Kind() == reflect.Struct {
				out = append(out, "[["+name+"]]")
			}
		}
	}
	return out
}

// Validate checks values a typo could make dangerous and fills derived
// defaults (the host budget from the machine's memory).
func (c *Config) Validate() error {
	var errs []string
	errs = append(errs, c.Cluster.validate()...)
	if c.Socket == "" {
		errs = append(errs, "socket is empty")
	}
	if c.DataDir == "" {
		errs = append(errs, "data_dir is empty")
	}
	if c.Limits.MaxFrameBytes < 4096 {
		errs = append(errs, "limits.max_frame_bytes must be at least 4096")
	}
	if c.Limits.StagingBytes < 0 || c.Limits.StagingBytes > 1<<40 {
		errs = append(errs, "limits.staging_bytes out of range")
	}
	if c.Limits.MaxSessions <= 0 || c.Limits.MaxSessionsPerConn <= 0 || c.Limits.MaxConns <= 0 ||
		c.Limits.MaxSessionsPerUID <= 0 || c.Limits.MaxConnsPerUID <= 0 {
		errs = append(errs, "limits.max_sessions, max_sessions_per_conn, max_sessions_per_uid, max_conns and max_conns_per_uid must be positive")
	}
	if c.Limits.AdminReservedConns < 0 {
		errs = append(errs, "limits.admin_reserved_conns must not be negative (0 = no reserve)")
	}
	if c.Limits.HandshakeTimeout <= 0 || c.Limits.FrameTimeout <= 0 {
		errs = append(errs, "limits.handshake_timeout and frame_timeout must be positive")
	}
	if c.Limits.IdleTimeout < 0 {
		errs = append(errs, "limits.idle_timeout must not be negative (0 = never)")
	}
	if c.Indexer.KMaxRatio < 0 || c.Indexer.KMaxRatio > 1 {
		errs = append(errs, "indexer.kmax_ratio must be in [0, 1]")
	}
	if c.Indexer.FallbackRatio < 0 || c.Indexer.FallbackRatio > 1 {
		errs = append(errs, "indexer.fallback_ratio must be in [0, 1]")
	}
	if _, err := indexer.ParseExpansion(c.Indexer.Expand); err != nil {
		errs = append(errs, "indexer.expand must be auto, on or off")
	}
	if c.Mover.Workers <= 0 {
		errs = append(errs, "mover.workers must be positive")
	}
	if c.Mover.StageWorkers < 0 || c.Mover.StageBytes < 0 || c.SSD.ReadQueueDepth < 0 || c.SSD.ReadQueueDepth > 1024 {
		errs = append(errs, "mover.stage_workers and mover.stage_bytes must not be negative, ssd.read_queue_depth must be in [0, 1024]")
	}
	switch c.SSD.ReadMode {
	case "", "direct", "buffered":
	default:
		errs = append(errs, fmt.Sprintf("ssd.read_mode %q: want direct or buffered", c.SSD.ReadMode))
	}
	switch c.GPU.Mode {
	case GPUAuto, GPUOff:
	default:
		errs = append(errs, fmt.Sprintf("gpu.mode %q: want auto or off", c.GPU.Mode))
	}
	if !(c.GPU.ReserveFraction > 0 && c.GPU.ReserveFraction <= 1) {
		errs = append(errs, "gpu.reserve_fraction must be in (0, 1]")
	}
	switch c.GPU.Scorer {
	case GPUAuto, GPUOff:
	default:
		errs = append(errs, fmt.Sprintf("gpu.scorer %q: want auto or off", c.GPU.Scorer))
	}
	if c.GPU.HeadroomBytes < 0 {
		errs = append(errs, "gpu.headroom_bytes must not be negative")
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Sprintf("log_format %q: want text or json", c.LogFormat))
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err.Error())
	}
	names := map[string]bool{}
	for _, m := range c.Indexer.Models {
		if m.Name == "" || m.Path == "" {
			errs = append(errs, "indexer.models entries need name and path")
		}
		if names[m.Name] {
			errs = append(errs, fmt.Sprintf("model %q registered twice", m.Name))
		}
		names[m.Name] = true
	}
	for _, m := range c.Indexer.Random {
		if m.Name == "" {
			errs = append(errs, "indexer.random entries need a name")
		}
		if names[m.Name] {
			errs = append(errs, fmt.Sprintf("model %q registered twice", m.Name))
		}
		names[m.Name] = true
	}
	for _, m := range c.Indexer.Text {
		if m.Name == "" {
			errs = append(errs, "indexer.text entries need a name")
		}
		if names[m.Name] {
			errs = append(errs, fmt.Sprintf("model %q registered twice", m.Name))
		}
		names[m.Name] = true
	}
	if t := c.Indexer.Trace; t != "" {
		if names[t] {
			errs = append(errs, fmt.Sprintf("model %q registered twice", t))
		}
		names[t] = true
	}
	if c.Indexer.DefaultModel != "" && !names[c.Indexer.DefaultModel] {
		errs = append(errs, fmt.Sprintf("indexer.default_model %q is not registered", c.Indexer.DefaultModel))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrConfig, strings.Join(errs, "; "))
	}
	// One uid never takes every slot: a per-uid limit at or above the global
	// one is capped at three quarters of it.
	c.Limits.MaxConnsPerUID = capPerUID(c.Limits.MaxConnsPerUID, c.Limits.MaxConns)
	c.Limits.MaxSessionsPerUID = capPerUID(c.Limits.MaxSessionsPerUID, c.Limits.MaxSessions)
	// The admins' reserve is at most a quarter of max_conns, so lowering
	// max_conns alone never leaves other users no slot.
	c.Limits.AdminReservedConns = min(c.Limits.AdminReservedConns, c.Limits.MaxConns/4)
	if c.Host.BudgetBytes == 0 {
		c.Host.BudgetBytes = memAvailable() / 4
	}
	if c.Limits.MaxHostReserveBytes == 0 {
		c.Limits.MaxHostReserveBytes = memAvailable() / 4
	}
	return nil
}

// capPerUID keeps a per-uid limit below the global limit it shares.
func capPerUID(perUID, global int) int {
	if global > 1 && perUID >= global {
		return max(1, min(global-1, global-global/4))
	}
	return perUID
}

// memAvailable reads MemAvailable from /proc/meminfo; 4 GiB if unreadable.
func memAvailable() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 4 << 30
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 2 && fs[0] == "MemAvailable:" {
			if kb, err := strconv.ParseInt(fs[1], 10, 64); err == nil {
				return kb << 10
			}
		}
	}
	return 4 << 30
}
