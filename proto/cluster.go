package proto

import "fmt"

// ClusterRequest is the CLUSTER admin op's body (JSON): Action "status",
// "join" (Addr: a member's peer address; this daemon joins through it) or
// "remove" (ID: the member to take out).
type ClusterRequest struct {
	Action string `json:"action"`
	Addr   string `json:"addr,omitempty"`
	ID     string `json:"id,omitempty"`
}

// AppendBinary implements Message.
func (m *ClusterRequest) AppendBinary(b []byte) ([]byte, error) { return appendJSON(b, m) }

// Decode implements Message.
func (m *ClusterRequest) Decode(body []byte) error {
	*m = ClusterRequest{}
	if err := decodeJSON("cluster request", body, m); err != nil {
		return err
	}
	switch m.Action {
	case "status":
	case "join":
		if m.Addr == "" {
			return fmt.Errorf("%w: cluster join needs addr", ErrMalformed)
		}
	case "remove":
		if m.ID == "" {
			return fmt.Errorf("%w: cluster remove needs id", ErrMalformed)
		}
	default:
		return fmt.Errorf("%w: cluster action %q is not status, join or remove", ErrMalformed, m.Action)
	}
	if len(m.Addr) > 256 || len(m.ID) > 256 {
		return fmt.Errorf("%w: cluster request field too long", ErrMalformed)
	}
	return nil
}

// ClusterMember is one member in ClusterReply.
type ClusterMember struct {
	ID          string `json:"id"`
	Address     string `json:"address"`
	PeerAddress string `json:"peer_address"`
	Suffrage    string `json:"suffrage"`
	// State is leader, alive, down or unknown (never answered a ping).
	State string `json:"state"`
	// LastContact is the last successful ping from the answering node.
	LastContact string `json:"last_contact"`
}

// ClusterReply is the CLUSTER reply (JSON): the cluster as the answering
// node sees it.
type ClusterReply struct {
	Node              string          `json:"node"`
	State             string          `json:"state"`
	Leader            string          `json:"leader"`
	LeaderAddr        string          `json:"leader_addr"`
	Term              uint64          `json:"term"`
	CommitIndex       uint64          `json:"commit_index"`
	AppliedIndex      uint64          `json:"applied_index"`
	LastSnapshot      uint64          `json:"last_snapshot_index"`
	Members           []ClusterMember `json:"members"`
	Sessions          int             `json:"sessions"`
	UnderReplicated   []string        `json:"under_replicated"`
	ReplicationFactor int             `json:"replication_factor"`
}

// AppendBinary implements Message.
func (m *ClusterReply) AppendBinary(b []byte) ([]byte, error) { return appendJSON(b, m) }

// Decode implements Message.
func (m *ClusterReply) Decode(body []byte) error {
	*m = ClusterReply{}
	return decodeJSON("CLUSTER reply", body, m)
}
