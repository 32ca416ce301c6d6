package daemon

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/flashmemory/flashmemory/tiers"
)

// Fsck is `flashmemd fsck`: with the daemon stopped, it runs the start-up
// check of the SSD tier (index replayed from the journal, or rebuilt when it
// is missing, damaged or stale; damaged records quarantined), then reads and
// verifies every page the index holds, and prints what it found. Exit code
// 0: nothing damaged; 1: damage found (reported, quarantined, never served);
// 2: the check could not run.
func Fsck(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("flashmemd fsck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: flashmemd fsck [--config FILE] [--data-dir DIR]\n\nChecks and repairs the SSD tier of a stopped flashmemd.\n\n")
		fs.PrintDefaults()
	}
	configPath := fs.String("config", getenv("FLASHMEMD_CONFIG"), "TOML configuration `file` (optional)")
	dataDir := fs.String("data-dir", "", "data `directory` (default from the configuration)")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	cfg := DefaultConfig()
	if *configPath != "" {
		if err := LoadConfigFile(&cfg, *configPath); err != nil {
			fmt.Fprintln(stderr, "flashmemd fsck:", err)
			return 2
		}
	}
	if err := ApplyEnv(&cfg, getenv); err != nil {
		fmt.Fprintln(stderr, "flashmemd fsck:", err)
		return 2
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	dir := filepath.Join(cfg.DataDir, "ssd")
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ssd, err := tiers.OpenSSD(tiers.SSDConfig{Dir: dir, GCInterval: -1, MinFreeBytes: cfg.SSD.MinFreeBytes, Logger: log, MergeMeta: mergeMeta})
	if err != nil {
		fmt.Fprintf(stderr, "flashmemd fsck: %v\n", err)
		return 2
	}
	bad, verr := ssd.VerifyAll()
	metaBad := verifyMetas(ssd)
	rep := ssd.Recovery()
	if cerr := ssd.Close(); verr == nil {
		verr = cerr
	}
	fmt.Fprintf(stdout, "data dir:            %s\n", cfg.DataDir)
	fmt.Fprintf(stdout, "segments:            %d\n", rep.Segments)
	fmt.Fprintf(stdout, "records read:        %d\n", rep.Records)
	fmt.Fprintf(stdout, "pages:               %d in %d sessions\n", rep.Pages, rep.Sessions)
	fmt.Fprintf(stdout, "persisted sessions:  %d\n", rep.Metas)
	if rep.IndexRebuilt {
		fmt.Fprintf(stdout, "index:               rebuilt from the journal (%s)\n", rep.Reason)
		if rep.MovedAside != "" {
			fmt.Fprintf(stdout, "old index moved to:  %s\n", rep.MovedAside)
		}
	} else {
		fmt.Fprintf(stdout, "index:               ok (replayed %d records)\n", rep.Replayed)
	}
	fmt.Fprintf(stdout, "torn writes skipped: %d\n", rep.Torn)
	fmt.Fprintf(stdout, "damaged records:     %d (%d with no readable header)\n", rep.Damaged, rep.Unattributed)
	fmt.Fprintf(stdout, "pages verified:      %d, damaged: %d\n", rep.Verified, len(bad))
	for _, p := range bad {
		fmt.Fprintf(stdout, "  damaged page %v (never served; its session reports it)\n", p)
	}
	for _, q := range rep.Quarantine {
		fmt.Fprintf(stdout, "  quarantined: %s\n", q)
	}
	if len(rep.LostMetas)+len(rep.OlderMetas)+rep.LostPages+rep.Redeleted > 0 {
		fmt.Fprintf(stdout, "journal lacked records the index named (a segment deleted or cut short; old index kept):\n")
		fmt.Fprintf(stdout, "  sessions lost:       %d %v\n", len(rep.LostMetas), rep.LostMetas)
		fmt.Fprintf(stdout, "  sessions older:      %d %v\n", len(rep.OlderMetas), rep.OlderMetas)
		fmt.Fprintf(stdout, "  pages lost or older: %d\n", rep.LostPages)
		fmt.Fprintf(stdout, "  deletions rewritten: %d\n", rep.Redeleted)
	}
	if len(rep.DamagedSessions) > 0 {
		fmt.Fprintf(stdout, "sessions named by damaged records: %v\n", rep.DamagedSessions)
	}
	fmt.Fprintf(stdout, "session metadata:    %d read whole, %d older than written\n", rep.Metas-len(metaBad), len(metaBad))
	for _, m := range metaBad {
		fmt.Fprintf(stdout, "  %s\n", m)
	}
	fmt.Fprintf(stdout, "took:                %v\n", rep.Took)
	if verr != nil {
		fmt.Fprintf(stderr, "flashmemd fsck: %v\n", verr)
		return 2
	}
	if rep.Damaged > 0 || len(bad) > 0 || len(metaBad) > 0 || len(rep.LostMetas)+len(rep.OlderMetas)+rep.LostPages > 0 {
		return 1
	}
	return 0
}

// verifyMetas reads and merges every metadata chain: what a RESUME would
// get, and whether that is older than what was written (a damaged record
// the read fell back from) or unreadable.
func verifyMetas(ssd *tiers.SSD) []string {
	ctx := context.Background()
	names, err := ssd.ListMeta(ctx)
	if err != nil {
		return []string{fmt.Sprintf("listing metadata: %v", err)}
	}
	var out []string
	for _, n := range names {
		c, err := ssd.ReadMetaChain(ctx, n)
		if err == nil && c.Damaged != nil {
			err = c.Damaged
		}
		var m *sessionMeta
		if err == nil {
			var blob []byte
			var used int
			if blob, used, err = mergeMeta(c.Base, c.Deltas); err == nil && used == len(c.Deltas) {
				m, _, err = decodeMeta(blob)
			}
		}
		if err == nil && m != nil {
			// Every page the metadata names must be stored, at least as
			// new as it says (what a RESUME, a CYCLE and VERIFY expect):
			// a page the index does not hold is as lost as a damaged one.
			var missing []string
			for p := uint32(0); uint64(p) < m.pages(); p++ {
				want := uint64(0)
				if int(p) < len(m.Gens) {
					want = m.Gens[p]
				}
				gen, ok := ssd.Generation(tiers.PageID{Session: m.ID, Page: p})
				switch {
				case !ok:
					missing = append(missing, fmt.Sprintf("%d (missing)", p))
				case gen < want:
					missing = append(missing, fmt.Sprintf("%d (generation %d, %d expected)", p, gen, want))
				}
			}
			if len(missing) > 0 {
				if len(missing) > 16 {
					missing = append(missing[:16], fmt.Sprintf("and %d more", len(missing)-16))
				}
				out = append(out, fmt.Sprintf("session %q: pages not stored: %s (reported per page on CYCLE and VERIFY)", n, strings.Join(missing, ", ")))
			}
		}
		if err != nil {
			out = append(out, fmt.Sprintf("session %q: %v (a RESUME gets the last intact state; its next PERSIST writes it whole)", n, err))
		}
	}
	return out
}
