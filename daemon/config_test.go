package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The sample configuration shipped in systemd/ parses strictly, so its
// keys cannot drift from the Config struct.
func TestShippedConfigParses(t *testing.T) {
	cfg := DefaultConfig()
	if err := LoadConfigFile(&cfg, filepath.Join("..", "systemd", "flashmemd.toml")); err != nil {
		t.Fatal(err)
	}
	if len(cfg.AllowedGroups) != 1 || cfg.AllowedGroups[0] != "flashmemd" {
		t.Fatalf("allowed_groups = %v", cfg.AllowedGroups)
	}
}

func TestConfigPrecedenceAndErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.toml")
	os.WriteFile(file, []byte("socket = \"/from/file.sock\"\ndata_dir = \"/from/file\"\n[limits]\nlease_timeout = \"7s\"\n"), 0o644)
	env := map[string]string{"FLASHMEMD_DATA_DIR": "/from/env", "FLASHMEMD_HOST_BUDGET": "2GiB"}
	cfg, err := ConfigFromArgs([]string{"--config", file, "--metrics", "off"}, func(k string) string { return env[k] }, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Socket != "/from/file.sock" || cfg.DataDir != "/from/env" || cfg.Metrics != "off" || cfg.Host.BudgetBytes != 2<<30 || time.Duration(cfg.Limits.LeaseTimeout) != 7*time.Second {
		t.Fatalf("precedence wrong: %+v", cfg)
	}
	cfg, err = ConfigFromArgs([]string{"--config", file, "--socket", "/from/flag.sock"}, func(string) string { return "" }, os.Stderr)
	if err != nil || cfg.Socket != "/from/flag.sock" {
		t.Fatalf("flag did not win: %v %v", cfg.Socket, err)
	}
	for name, body := range map[string]string{
		"unknown key":   "sockett = \"x\"\n",
		"bad duration":  "[limits]\nlease_timeout = \"soon\"\n",
		"bad ratio":     "[indexer]\nkmax_ratio = 2.0\n",
		"unknown model": "[indexer]\ndefault_model = \"nope\"\n",
	} {
		os.WriteFile(file, []byte(body), 0o644)
		_, err := ConfigFromArgs([]string{"--config", file}, func(string) string { return "" }, os.Stderr)
		if !errors.Is(err, ErrConfig) {
			t.Errorf("%s: got %v, want ErrConfig", name, err)
		}
		if name == "unknown key" && (err == nil || !strings.Contains(err.Error(), "sockett")) {
			t.Errorf("unknown key error does not name the key: %v", err)
		}
	}
	if _, err := ConfigFromArgs([]string{"--host-budget", "lots"}, func(string) string { return "" }, os.Stderr); !errors.Is(err, ErrConfig) {
		t.Errorf("bad --host-budget: %v", err)
	}
}
