package daemon

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/flashmemory/flashmemory/internal/buildinfo"
)

// ErrVersion is ConfigFromArgs' answer to --version, which it has printed.
var ErrVersion = errors.New("version printed")

const usageHead = `usage: flashmemd [--config FILE] [--socket PATH] [--data-dir DIR] [--metrics ADDR]
                 [--host-budget SIZE] [--log-level LEVEL] [--version]
       flashmemd fsck [--config FILE] [--data-dir DIR]   (offline check of the data directory)

flashmemd keeps long-context KV caches in GPU reserve, host mirror and SSD tiers and serves
decoders over a unix socket. It runs in the foreground until SIGINT or SIGTERM; without any
flag it uses embedded defaults. flashmemctl talks to it (flashmemctl --help).

flags:
`

const usageEnv = `
environment (precedence: defaults < config file < environment < flags):
  FLASHMEMD_CONFIG       configuration file, as --config
  FLASHMEMD_SOCKET       control socket, as --socket
  FLASHMEMD_DATA_DIR     data directory, as --data-dir
  FLASHMEMD_METRICS      metrics address, as --metrics
  FLASHMEMD_HOST_BUDGET  host mirror budget, as --host-budget
  FLASHMEMD_LOG_LEVEL    log level, as --log-level
  XDG_RUNTIME_DIR        default socket directory ($XDG_RUNTIME_DIR/flashmemd/)
  XDG_DATA_HOME          default data directory ($XDG_DATA_HOME/flashmemd)
  LISTEN_FDS, LISTEN_PID, NOTIFY_SOCKET, WATCHDOG_USEC   set by systemd (socket activation,
                         readiness and watchdog)
sizes: a number of bytes with an optional unit B, K or KiB, M or MiB, G or GiB, T or TiB.
configuration keys: systemd/flashmemd.toml lists every table and key with its default.
`

// stdout is where --version goes: the process's stdout when stderr is the
// process's stderr, else the writer the caller gave (tests).
func stdout(stderr io.Writer) io.Writer {
	if stderr == os.Stderr {
		return os.Stdout
	}
	return stderr
}

// ConfigFromArgs builds the configuration the way flashmemd's main does:
// embedded defaults, then the TOML file (--config or $FLASHMEMD_CONFIG), then
// FLASHMEMD_* environment variables, then flags; flags win.
func ConfigFromArgs(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("flashmemd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageHead)
		fs.PrintDefaults()
		fmt.Fprint(stderr, usageEnv)
	}
	configPath := fs.String("config", getenv("FLASHMEMD_CONFIG"), "TOML configuration `file` (optional; env FLASHMEMD_CONFIG)")
	socket := fs.String("socket", "", "control socket `path` (env FLASHMEMD_SOCKET; default "+cfg.Socket+")")
	dataDir := fs.String("data-dir", "", "data `directory` for the SSD tier and persisted sessions (env FLASHMEMD_DATA_DIR; default "+cfg.DataDir+")")
	metricsAddr := fs.String("metrics", "", "metrics `address`: host:port on loopback, unix:/path, or off (env FLASHMEMD_METRICS; default "+cfg.Metrics+")")
	hostBudget := fs.String("host-budget", "", "host mirror budget `size`, e.g. 8GiB (env FLASHMEMD_HOST_BUDGET; default: a quarter of available memory)")
	logLevel := fs.String("log-level", "", "`level`: debug, info, warn or error (env FLASHMEMD_LOG_LEVEL; default "+cfg.LogLevel+")")
	version := fs.Bool("version", false, "print the version, commit and build tags, then exit")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if *version {
		fmt.Fprintln(stdout(stderr), "flashmemd", buildinfo.Read())
		return cfg, ErrVersion
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("%w: unexpected arguments %q: flashmemd takes flags only (flashmemd --help lists them)", ErrConfig, fs.Args())
	}
	if *configPath != "" {
		if err := LoadConfigFile(&cfg, *configPath); err != nil {
			return cfg, err
		}
	}
	if err := ApplyEnv(&cfg, getenv); err != nil {
		return cfg, err
	}
	if *socket != "" {
		cfg.Socket = *socket
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	if *metricsAddr != "" {
		cfg.Metrics = *metricsAddr
	}
	if *logLevel != "" {
		cfg.LogLevel = *logLevel
	}
	if *hostBudget != "" {
		n, err := ParseBytes(*hostBudget)
		if err != nil {
			return cfg, fmt.Errorf("%w: --host-budget: %v", ErrConfig, err)
		}
		cfg.Host.BudgetBytes = n
	}
	return cfg, cfg.Validate()
}

// Main runs flashmemd with the process's arguments and returns its exit code.
func Main() int {
	if len(os.Args) > 1 && os.Args[1] == "fsck" {
		return Fsck(os.Args[2:], os.Getenv, os.Stdout, os.Stderr)
	}
	cfg, err := ConfigFromArgs(os.Args[1:], os.Getenv, os.Stderr)
	if err != nil {
		if err == flag.ErrHelp || err == ErrVersion {
			return 0
		}
		fmt.Fprintln(os.Stderr, "flashmemd:", err)
		return 2
	}
	log := NewLogger(cfg, os.Stderr)
	d, err := New(cfg, WithLogger(log))
	if err != nil {
		log.Error("start failed", "err", err)
		return 1
	}
	ctx, stop := signalContext()
	defer stop()
	runErr := d.Run(ctx)
	if err := d.Close(); err != nil && runErr == nil {
		runErr = err
	}
	if runErr != nil {
		log.Error("stopped with error", "err", runErr)
		return 1
	}
	return 0
}
