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

func TestGPUConfig(t *testing.T) {
	def := DefaultConfig().GPU
	if def.Mode != GPUAuto || def.ReserveFraction != 0.5 || def.HeadroomBytes != 2<<30 {
		t.Fatalf("default [gpu] = %+v", def)
	}
	tests := []struct {
		name    string
		body    string
		want    GPUConfig
		wantErr bool
	}{
		{"defaults", "", def, false},
		{"off", "[gpu]\nmode = \"off\"\n", GPUConfig{Mode: GPUOff, ReserveFraction: 0.5, HeadroomBytes: 2 << 30, PinnedMirror: true, Scorer: GPUAuto}, false},
		{"sized", "[gpu]\nreserve_fraction = 0.8\nheadroom_bytes = 4294967296\n", GPUConfig{Mode: GPUAuto, ReserveFraction: 0.8, HeadroomBytes: 4 << 30, PinnedMirror: true, Scorer: GPUAuto}, false},
		{"whole free memory", "[gpu]\nreserve_fraction = 1.0\nheadroom_bytes = 0\n", GPUConfig{Mode: GPUAuto, ReserveFraction: 1, HeadroomBytes: 0, PinnedMirror: true, Scorer: GPUAuto}, false},
		{"pageable mirror", "[gpu]\npinned_mirror = false\n", GPUConfig{Mode: GPUAuto, ReserveFraction: 0.5, HeadroomBytes: 2 << 30, Scorer: GPUAuto}, false},
		{"cpu scorer", "[gpu]\nscorer = \"off\"\n", GPUConfig{Mode: GPUAuto, ReserveFraction: 0.5, HeadroomBytes: 2 << 30, PinnedMirror: true, Scorer: GPUOff}, false},
		{"bad scorer", "[gpu]\nscorer = \"gpu\"\n", GPUConfig{}, true},
		{"unknown mode", "[gpu]\nmode = \"on\"\n", GPUConfig{}, true},
		{"empty mode", "[gpu]\nmode = \"\"\n", GPUConfig{}, true},
		{"zero fraction", "[gpu]\nreserve_fraction = 0.0\n", GPUConfig{}, true},
		{"fraction above 1", "[gpu]\nreserve_fraction = 1.5\n", GPUConfig{}, true},
		{"negative headroom", "[gpu]\nheadroom_bytes = -1\n", GPUConfig{}, true},
		{"unknown gpu key", "[gpu]\ndevices = [0]\n", GPUConfig{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "c.toml")
			if err := os.WriteFile(file, []byte(tt.body), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := ConfigFromArgs([]string{"--config", file}, func(string) string { return "" }, os.Stderr)
			if tt.wantErr {
				if !errors.Is(err, ErrConfig) {
					t.Fatalf("got %v, want ErrConfig", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.GPU != tt.want {
				t.Fatalf("[gpu] = %+v, want %+v", cfg.GPU, tt.want)
			}
		})
	}
}
