package ctl

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flashmemory/flashmemory/proto"
)

// ErrDamaged is verify's error when pages failed their check; Main exits 3
// for it, so scripts can tell damage from a failure to run.
var ErrDamaged = errors.New("flashmemctl: session damaged")

// oneSession is the Args check of the commands that take one session: a
// missing or extra argument prints the command's usage and how to find
// session names.
func oneSession(cmd *cobra.Command, args []string) error {
	if len(args) == 1 {
		return nil
	}
	return fmt.Errorf("%w: %s takes one session name or id (got %d arguments)\nusage: %s\n`flashmemctl sessions` lists the sessions you may name",
		ErrUsage, cmd.Name(), len(args), cmd.UseLine())
}

func sessionsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "sessions",
		Short: "List your sessions, live and persisted on SSD (all users' for root)",
		Long: `sessions lists live sessions (attached to a connection, or detached and resumable) and
persisted sessions that are on SSD only, with their state, KV size, pages per tier
(reserve/host/ssd), owner and last use. --json prints the daemon's reply.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAdmin(g, cmd.Context(), (*proto.Client).Sessions, func(r *proto.SessionsReply) error {
				if len(r.Sessions) == 0 {
					fmt.Fprintln(g.out, "no sessions (`flashmemctl demo --keep` leaves one behind)")
					return nil
				}
				tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tNAME\tSTATE\tMODEL\tOWNER\tKV\tPAGES\tRES/HOST/SSD\tLAST USED")
				now := time.Now()
				for _, s := range r.Sessions {
					tp := s.TierPages
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%d\t%d/%d/%d\t%s\n", s.ID, clip(dash(s.Name), 20), s.State, clip(s.Model, 12), s.OwnerUID,
						human(s.Bytes), s.Pages, tp["reserve"], tp["host"], tp["ssd"], ago(now, s.LastUsed))
				}
				return tw.Flush()
			})
		},
	}
}

// clip shortens s to n runes so tables stay inside 100 columns.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.Local().Format("2006-01-02")
}

// targetCall turns an admin call taking a target into runAdmin's form.
func targetCall[T any](arg string, call func(*proto.Client, context.Context, proto.AdminTarget) (T, error)) func(*proto.Client, context.Context) (T, error) {
	return func(c *proto.Client, ctx context.Context) (T, error) {
		r, err := call(c, ctx, target(arg))
		return r, explain(err, arg)
	}
}

func resumeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "resume NAME",
		Short: "Load a persisted session from SSD into memory, ready for its decoder to RESUME",
		Args:  oneSession,
		RunE: func(cmd *cobra.Command, args []string) error {
			resume := func(c *proto.Client, ctx context.Context) (*proto.ResumeReply, error) {
				r, err := c.Resume(ctx, args[0])
				if err != nil {
					return nil, explain(err, args[0])
				}
				// Only the decoder maps the reserve; this connection ends
				// here and the session stays in memory, detached.
				r.Region.Close()
				return r, nil
			}
			return runAdmin(g, cmd.Context(), resume, func(r *proto.ResumeReply) error {
				fmt.Fprintf(g.out, "session %d %q is in memory (%d chunks, model %s), detached: its decoder may RESUME it\n",
					r.Session, args[0], r.Chunks, r.Model)
				return nil
			})
		},
	}
}

func persistCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "persist SESSION",
		Short: "Write a named live session to SSD and keep it across restarts",
		Args:  oneSession,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAdmin(g, cmd.Context(), targetCall(args[0], (*proto.Client).Save), func(r *proto.EvictReply) error {
				if r.OnSSDOnly {
					fmt.Fprintf(g.out, "session %s is already persisted and on SSD only\n", args[0])
					return nil
				}
				fmt.Fprintf(g.out, "persisted session %s (%s of KV on SSD)\n", args[0], human(r.Bytes))
				return nil
			})
		},
	}
}

func deleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete SESSION",
		Short: "Delete a session, live or persisted, with its pages on SSD",
		Args:  oneSession,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAdmin(g, cmd.Context(), targetCall(args[0], (*proto.Client).Delete), func(r *proto.EvictReply) error {
				fmt.Fprintf(g.out, "deleted session %s (id %v, %s of KV)\n", args[0], r.Sessions, human(r.Bytes))
				return nil
			})
		},
	}
}

func verifyCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "verify SESSION",
		Short: "Read every page of a session back and check its checksum; exit 3 on damage",
		Args:  oneSession,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.dial(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			stop := spinner(g.errw, "verifying "+args[0])
			r, err := c.Verify(ctx, target(args[0]))
			stop()
			if err != nil {
				return explain(err, args[0])
			}
			if g.asJSON {
				if err := g.printJSON(r); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(g.out, "session %d %q: %d pages, %d verified (%d in memory, newer than SSD), %d bad; %s read from SSD\n",
					r.Session, r.Name, r.Pages, r.Verified, r.InMemory, r.Bad, human(r.Bytes))
				for _, d := range r.Damage {
					fmt.Fprintf(g.out, "  page %d: %s\n", d.Page, d.Reason)
				}
				if cv := r.Cluster; cv != nil {
					fmt.Fprintf(g.out, "cluster: owned here (%s, epoch %d); %d manifest pages, %d verified, %d pulled from replicas, %d healed, %d bad\n",
						cv.Owner, cv.Epoch, cv.Manifest, cv.Verified, cv.Pulled, cv.Healed, cv.Bad)
				}
			}
			if r.Bad > 0 {
				return fmt.Errorf("%w: %d of %d pages of %q are bad: delete it (flashmemctl delete %s) or restore the data directory from a copy",
					ErrDamaged, r.Bad, r.Pages, r.Name, args[0])
			}
			return nil
		},
	}
}

func waitCmd(g *globals) *cobra.Command {
	var within time.Duration
	cmd := &cobra.Command{
		Use:   "wait",
		Short: "Wait until flashmemd answers on its socket (after starting it in the background)",
		Long: `wait dials the control socket until the daemon answers or --for passes, so that
"flashmemd & flashmemctl wait" is safe to paste: the next command finds the daemon ready.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			deadline := time.Now().Add(within)
			for {
				c, err := g.dial(cmd.Context())
				if err == nil {
					c.Close()
					fmt.Fprintf(g.out, "flashmemd is up at %s\n", g.socket)
					return nil
				}
				if !errors.Is(err, ErrNoDaemon) || time.Now().After(deadline) {
					return fmt.Errorf("after %s: %w", within, err)
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(50 * time.Millisecond):
				}
			}
		},
	}
	cmd.Flags().DurationVar(&within, "for", 30*time.Second, "how long to wait")
	return cmd
}
