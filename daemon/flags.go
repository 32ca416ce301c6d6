package daemon

import (
	"flag"
	"fmt"
	"io"
	"os"
)

// ConfigFromArgs builds the configuration the way flashmemd's main does:
// embedded defaults, then the TOML file (--config or $FLASHMEMD_CONFIG), then
// FLASHMEMD_* environment variables, then flags; flags win.
func ConfigFromArgs(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("flashmemd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: flashmemd [--config FILE] [--socket PATH] [--data-dir DIR] [--metrics ADDR]\n       flashmemd fsck [--config FILE] [--data-dir DIR]\n\n")
		fs.PrintDefaults()
	}
	configPath := fs.String("config", getenv("FLASHMEMD_CONFIG"), "TOML configuration `file` (optional)")
	socket := fs.String("socket", "", "control socket `path` (default "+cfg.Socket+")")
	dataDir := fs.String("data-dir", "", "data `directory` for the SSD tier and persisted sessions (default "+cfg.DataDir+")")
	metricsAddr := fs.String("metrics", "", "metrics `address`: host:port on loopback, unix:/path, or off (default "+cfg.Metrics+")")
	hostBudget := fs.String("host-budget", "", "host mirror budget, e.g. 8GiB (default: a quarter of available memory)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("%w: unexpected arguments %q", ErrConfig, fs.Args())
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
		if err == flag.ErrHelp {
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
