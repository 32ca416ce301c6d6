package ctl

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flashmemory/flashmemory/proto"
)

// clusterCmd is `flashmemctl cluster status|join|remove`.
func clusterCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Show or change the daemon's cluster (docs/cluster.md)",
	}
	run := func(req proto.ClusterRequest) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			switch req.Action {
			case "join":
				req.Addr = args[0]
			case "remove":
				req.ID = args[0]
			}
			return runAdmin(g, cmd.Context(), func(c *proto.Client, ctx context.Context) (*proto.ClusterReply, error) {
				return c.Cluster(ctx, req)
			}, func(r *proto.ClusterReply) error { return showCluster(g, r) })
		}
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Leader, term, members with their state and last contact, under-replicated sessions",
		Args:  cobra.NoArgs,
		RunE:  run(proto.ClusterRequest{Action: "status"}),
	}, &cobra.Command{
		Use:   "join ADDR",
		Short: "Join the cluster a member's peer address ADDR belongs to (run against a daemon started without bootstrap)",
		Args:  cobra.ExactArgs(1),
		RunE:  run(proto.ClusterRequest{Action: "join"}),
	}, &cobra.Command{
		Use:   "remove ID",
		Short: "Take member ID out of the cluster; its sessions are re-replicated on the others",
		Args:  cobra.ExactArgs(1),
		RunE:  run(proto.ClusterRequest{Action: "remove"}),
	})
	return cmd
}

func showCluster(g *globals, r *proto.ClusterReply) error {
	leader := r.Leader
	if leader == "" {
		leader = "none (no quorum reachable from this node)"
	}
	fmt.Fprintf(g.out, "node %s (%s)  leader %s  term %d  commit %d  applied %d  sessions %d  replication factor %d\n",
		r.Node, r.State, leader, r.Term, r.CommitIndex, r.AppliedIndex, r.Sessions, r.ReplicationFactor)
	tw := tabwriter.NewWriter(g.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRAFT ADDRESS\tPEER ADDRESS\tSTATE\tLAST CONTACT")
	for _, m := range r.Members {
		lc := "never"
		if t, err := time.Parse(time.RFC3339Nano, m.LastContact); err == nil {
			lc = time.Since(t).Round(time.Millisecond).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.ID, m.Address, dash(m.PeerAddress), m.State, lc)
	}
	tw.Flush()
	if len(r.UnderReplicated) > 0 {
		fmt.Fprintf(g.out, "under-replicated (%d): %v — re-replication runs on its own; a member that stays down should be removed (flashmemctl cluster remove ID)\n", len(r.UnderReplicated), r.UnderReplicated)
	} else {
		fmt.Fprintln(g.out, "every session has its replicas")
	}
	return nil
}
