// Package wire is the line protocol between the testenv harness and its peer
// program: the peer writes one JSON object per line on stdout, so the harness
// can follow a server as it runs and read a client's results when it exits.
package wire

// Cred is what a peer reports about its own credentials after dropping
// privileges, so tests check the process really runs as the uid they asked for
// and kept no supplementary groups.
type Cred struct {
	UID    uint32   `json:"uid"`
	EUID   uint32   `json:"euid"`
	GID    uint32   `json:"gid"`
	EGID   uint32   `json:"egid"`
	Groups []uint32 `json:"groups"`
}

// Event kinds written by a serving peer.
const (
	EvReady  = "ready"  // listening; Addr and Cred are set
	EvAccept = "accept" // TCP connection accepted; Conn and Remote are set
	EvRead   = "read"   // bytes read; Conn (TCP) or Remote (UDP) and Data are set
	EvError  = "error"  // a non-fatal error; Err is set
	EvSync   = "sync"   // answer to a "sync" line on stdin
)

// SyncRequest is the stdin line asking a serving peer for an EvSync event.
// Since the peer writes events in order, seeing EvSync means every event from
// before the request has been read.
const SyncRequest = "sync"

// Event is one line of a serving peer's stdout.
type Event struct {
	Ev     string `json:"ev"`
	Conn   int    `json:"conn,omitempty"`
	Addr   string `json:"addr,omitempty"`
	Remote string `json:"remote,omitempty"`
	Data   []byte `json:"data,omitempty"`
	Cred   *Cred  `json:"cred,omitempty"`
	Err    string `json:"err,omitempty"`
}

// Result is one line of a dialing peer's stdout, one per client.
type Result struct {
	Connected bool   `json:"connected"`
	Local     string `json:"local,omitempty"`
	Remote    string `json:"remote,omitempty"`
	Received  []byte `json:"received,omitempty"`
	Err       string `json:"err,omitempty"`
	Cred      Cred   `json:"cred"`
}
