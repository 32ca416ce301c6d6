package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flashmemory/flashmemory/daemon"
	"github.com/flashmemory/flashmemory/internal/buildinfo"
	"github.com/flashmemory/flashmemory/proto"
)

// Main runs flashmemctl with the process's arguments and returns the exit
// code.
func Main() int {
	cmd := Command(os.Stdout, os.Stderr)
	if err := cmd.Execute(); err != nil {
		if errors.Is(err, ErrDamaged) {
			return 3
		}
		return 1
	}
	return 0
}

type globals struct {
	socket  string
	timeout time.Duration
	asJSON  bool
	out     io.Writer
	errw    io.Writer
}

// ErrNoDaemon means nothing answers on the control socket.
var ErrNoDaemon = errors.New("no flashmemd is running there")

func (g *globals) dial(ctx context.Context) (*proto.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	c, err := proto.Dial(ctx, g.socket, &proto.Options{ClientName: "flashmemctl"})
	if err != nil {
		return nil, dialError(g.socket, err)
	}
	return c, nil
}

// dialError says what to do when the socket does not answer, naming the
// path once.
func dialError(path string, err error) error {
	const fix = "start it (`flashmemd --socket PATH &`, scripts/demo.sh, or systemctl start flashmemd.socket) or point flashmemctl at its socket with --socket PATH or FLASHMEMD_SOCKET"
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%w: %s does not exist: %s", ErrNoDaemon, path, fix)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w: %s exists but nothing listens on it (a daemon that exited?): %s", ErrNoDaemon, path, fix)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("no permission to connect to %s: run as the daemon's user or join its group (allowed_groups in the daemon's config)", path)
	case errors.Is(err, syscall.ENOTSOCK):
		return fmt.Errorf("%s is not a socket: pass flashmemd's control socket with --socket PATH", path)
	}
	var ne *net.OpError
	if errors.As(err, &ne) && ne.Err != nil {
		err = ne.Err
	}
	return fmt.Errorf("connecting to flashmemd at %s: %v", path, err)
}

// explain adds what to do next to the daemon's errors that a user causes.
func explain(err error, arg string) error {
	if err == nil {
		return nil
	}
	switch proto.CodeOf(err) {
	case proto.CodeUnknownSession:
		return fmt.Errorf("no session %q, live or persisted: `flashmemctl sessions` lists yours (%w)", arg, err)
	case proto.CodeNotOwner:
		// Only another uid's session is fixed by who runs flashmemctl; one
		// attached to another connection or moved to another node is
		// refused for root too, and the daemon's message says what to do.
		if strings.Contains(err.Error(), "belongs to uid") {
			return fmt.Errorf("%w: run flashmemctl as the session's owner or as root", err)
		}
	}
	return err
}

// Command builds the flashmemctl command tree.
func Command(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{out: stdout, errw: stderr}
	def := daemon.DefaultConfig().Socket
	if v := os.Getenv("FLASHMEMD_SOCKET"); v != "" {
		def = v
	}
	root := &cobra.Command{
		Use:           "flashmemctl",
		Short:         "Inspect and exercise a running flashmemd",
		Version:       buildinfo.Read().String(),
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.SetVersionTemplate("flashmemctl {{.Version}}\n")
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.socket, "socket", def, "flashmemd control socket (env FLASHMEMD_SOCKET; default: $XDG_RUNTIME_DIR/flashmemd/flashmemd.sock, else /run/flashmemd/flashmemd.sock)")
	root.PersistentFlags().DurationVar(&g.timeout, "timeout", 10*time.Second, "connect timeout")
	root.PersistentFlags().BoolVar(&g.asJSON, "json", false, "print JSON")
	root.AddCommand(statusCmd(g), sessionsCmd(g), inspectCmd(g), evictCmd(g), resumeCmd(g), persistCmd(g),
		deleteCmd(g), verifyCmd(g), waitCmd(g), clusterCmd(g), demoCmd(g), trainCmd(g), genCmd(g), evalCmd(g), simCmd(g))
	return root
}

// runAdmin dials the daemon, makes one admin call and prints its reply as
// JSON (--json) or for people.
func runAdmin[T any](g *globals, ctx context.Context, call func(*proto.Client, context.Context) (T, error), show func(T) error) error {
	c, err := g.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := call(c, ctx)
	if err != nil {
		return err
	}
	if g.asJSON {
		return g.printJSON(r)
	}
	return show(r)
}

func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Daemon status: uptime, connections, sessions, tiers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAdmin(g, cmd.Context(), (*proto.Client).Status, func(st *proto.StatusReply) error {
				fmt.Fprintf(g.out, "flashmemd %s (protocol %d, instance %s), up %s\n", st.Server, st.Protocol, st.Instance[:8], time.Duration(st.UptimeSeconds*float64(time.Second)).Round(time.Second))
				fmt.Fprintf(g.out, "connections %d, sessions %d, leases %d\n\n", st.Connections, st.Sessions, st.Leases)
				tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', tabwriter.AlignRight)
				fmt.Fprintln(tw, "tier\tpages\tused\tcapacity\thits\tmisses\tread\twritten\t")
				for _, t := range st.Tiers {
					capacity := "-"
					if t.CapacityBytes > 0 {
						capacity = human(t.CapacityBytes)
					}
					fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%s\t%s\t\n", t.Name, t.Pages, human(t.UsedBytes), capacity, t.Hits, t.Misses, human(t.ReadBytes), human(t.WrittenBytes))
				}
				tw.Flush()
				if tot := st.Counters["total_bytes"]; tot > 0 {
					fmt.Fprintf(g.out, "\nfootprint: %s resident of %s KV (%.1f %%)\n", human(uint64(st.Counters["resident_bytes"])), human(uint64(tot)), 100*st.Counters["resident_bytes"]/tot)
				}
				writeGPUStatus(g.out, st)
				return nil
			})
		},
	}
}

// target reads a session argument: a numeric id or a name.
func target(arg string) proto.AdminTarget {
	if id, err := strconv.ParseUint(arg, 10, 64); err == nil {
		return proto.AdminTarget{Session: id}
	}
	return proto.AdminTarget{Name: arg}
}

func inspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect SESSION",
		Short: "Show one session, live or persisted: layout, policy, pages per tier, resident set",
		Args:  oneSession,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAdmin(g, cmd.Context(), targetCall(args[0], (*proto.Client).Inspect), func(r *proto.InspectReply) error {
				s := r.Session
				fmt.Fprintf(g.out, "session %d %q  model %s  owner uid %d  state %s  persist %v\n", s.ID, s.Name, s.Model, s.OwnerUID, dash(s.State), s.Persist)
				fmt.Fprintf(g.out, "chunks %d  pages %d  cycles %d  KV %s  leases %d  fallback %v  above-threshold %.4f\n", s.Chunks, s.Pages, s.Cycles, human(s.Bytes), r.Leases, s.Fallback, r.AboveFraction)
				fmt.Fprintf(g.out, "layout: %d layers, %d chunks/page, page %s, %d-byte keys × %d target layers, τ %d, %d reserve slots\n",
					len(r.Layout.Layers), r.Layout.ChunksPerPage, human(r.Layout.PageBytes()), r.Layout.KeyBytes, r.Layout.TargetLayers, r.Layout.CycleSteps, r.Layout.ReserveSlots)
				p := r.Policy
				fmt.Fprintf(g.out, "policy: first_keep %d  last_keep %d  kmax %d  kmax_ratio %g  fallback_ratio %g  lookahead %d\n", p.FirstKeep, p.LastKeep, p.KMax, p.KMaxRatio, p.FallbackRatio, p.Lookahead)
				fmt.Fprintf(g.out, "pages per tier: reserve %d  host %d  ssd %d\n", r.TierPages["reserve"], r.TierPages["host"], r.TierPages["ssd"])
				if s.State == "on-ssd" {
					fmt.Fprintf(g.out, "on SSD only: `flashmemctl resume %s` loads it, `flashmemctl verify %s` checks its pages\n", s.Name, s.Name)
				} else {
					fmt.Fprintf(g.out, "resident set (%d pages): %s\n", len(r.Resident), ranges(r.Resident))
				}
				return nil
			})
		},
	}
}

func evictCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "evict SESSION",
		Short: "Evict a session from memory: persisted ones stay resumable on SSD, others are deleted",
		Args:  oneSession,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAdmin(g, cmd.Context(), targetCall(args[0], (*proto.Client).Evict), func(r *proto.EvictReply) error {
				if r.OnSSDOnly {
					fmt.Fprintf(g.out, "session %s is persisted and already out of memory (on SSD only); `flashmemctl delete %s` removes it\n", args[0], args[0])
					return nil
				}
				fmt.Fprintf(g.out, "evicted session %v (%s of KV)\n", r.Sessions, human(r.Bytes))
				return nil
			})
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ranges prints sorted page numbers compactly: 0-3,17,40-63.
func ranges(p []uint32) string {
	var b strings.Builder
	for i := 0; i < len(p); {
		j := i
		for j+1 < len(p) && p[j+1] == p[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if j == i {
			fmt.Fprintf(&b, "%d", p[i])
		} else {
			fmt.Fprintf(&b, "%d-%d", p[i], p[j])
		}
		i = j + 1
	}
	return b.String()
}

func human(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// writeGPUStatus prints STATUS's GPU section: reserves per device, whether the mirror is
// pinned, and the models scoring on a GPU. Nothing on hosts without CUDA reserves.
func writeGPUStatus(w io.Writer, st *proto.StatusReply) {
	if len(st.GPUs) == 0 && len(st.Scoring) == 0 {
		return
	}
	pinned := "pageable"
	if st.PinnedMirror {
		pinned = "pinned (DMA recall)"
	}
	fmt.Fprintf(w, "\nGPUs (host mirror %s):\n", pinned)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  device\tname\treserve used\tbudget\tsessions via fd\t")
	for _, g := range st.GPUs {
		exp := "yes"
		if !g.Exportable {
			exp = "no (legacy IPC only)"
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t\n", g.Device, g.Name, human(g.ReserveUsedBytes), human(g.ReserveBudgetBytes), exp)
	}
	tw.Flush()
	for _, sc := range st.Scoring {
		fmt.Fprintf(w, "  model %q scores on GPU %d: %d batches", sc.Model, sc.Device, sc.GPUBatches)
		if sc.CPUFallbacks > 0 {
			fmt.Fprintf(w, ", %d fell back to the CPU (last: %s)", sc.CPUFallbacks, sc.LastError)
		}
		fmt.Fprintln(w)
	}
}
