package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// newGen is the message the kernel multicasts after every committed
// nftables transaction: (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN.
const newGen = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN)

// WatchChanges signals on the returned channel after nftables transactions
// commit in the namespace of netnsFd (the caller's when < 0): the cue to
// compare the ruleset's generation with the one portfw's own last commit
// made, and to look at the table only when they differ. Bursts coalesce
// into one pending signal. Only NEWGEN messages are decoded, so a transaction of 10k
// elements costs a few netlink reads, not 10k parses. If notifications were
// lost (the socket overflowed) that is a signal too. The channel is closed
// when ctx ends or the socket fails.
func WatchChanges(ctx context.Context, netnsFd int) (<-chan struct{}, error) {
	m, err := WatchCommits(ctx, netnsFd)
	if err != nil {
		return nil, err
	}
	return m.C, nil
}

// Commit is one committed nftables transaction as its NEWGEN notification
// tells it: the generation it made and the process that made it (the
// kernel names it since 5.3; PID 0 and Comm "" where it does not).
type Commit struct {
	Gen  uint32
	PID  uint32
	Comm string
}

// Who is the committing process as "nft (pid 4242)", or "" when unknown.
func (c Commit) Who() string {
	switch {
	case c.Comm != "" && c.PID != 0:
		return fmt.Sprintf("%s (pid %d)", c.Comm, c.PID)
	case c.PID != 0:
		return fmt.Sprintf("pid %d", c.PID)
	}
	return ""
}

// Monitor is WatchChanges that also remembers the last commits, so the
// daemon can say who changed its table.
type Monitor struct {
	C <-chan struct{}

	mu      sync.Mutex
	commits [16]Commit // a ring of the last commits
	n       int
}

// Since returns the commits remembered that made a generation after gen,
// oldest first.
func (m *Monitor) Since(gen uint32) []Commit {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Commit
	for i := max(0, m.n-len(m.commits)); i < m.n; i++ {
		if c := m.commits[i%len(m.commits)]; int32(c.Gen-gen) > 0 {
			out = append(out, c)
		}
	}
	return out
}

func (m *Monitor) record(c Commit) {
	m.mu.Lock()
	m.commits[m.n%len(m.commits)] = c
	m.n++
	m.mu.Unlock()
}

// WatchCommits is WatchChanges returning a Monitor.
func WatchCommits(ctx context.Context, netnsFd int) (*Monitor, error) {
	cfg := &netlink.Config{}
	if netnsFd >= 0 {
		cfg.NetNS = netnsFd
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("watch nftables: %w", err)
	}
	if err := conn.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		conn.Close()
		return nil, fmt.Errorf("watch nftables: join group: %w", err)
	}
	ch := make(chan struct{}, 1)
	m := &Monitor{C: ch}
	signal := func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	go func() {
		defer close(ch)
		for {
			msgs, err := conn.Receive()
			if err != nil {
				if errors.Is(err, unix.ENOBUFS) {
					signal()
					continue
				}
				return
			}
			seen := false
			for _, msg := range msgs {
				if msg.Header.Type == newGen {
					m.record(decodeGen(msg.Data))
					seen = true
				}
			}
			if seen {
				signal()
			}
		}
	}()
	return m, nil
}

// decodeGen decodes a NEWGEN message: nfgenmsg, then NFTA_GEN_ID,
// NFTA_GEN_PROC_PID and NFTA_GEN_PROC_NAME.
func decodeGen(data []byte) Commit {
	var c Commit
	if len(data) < 4 {
		return c
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return c
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_GEN_ID:
			c.Gen = ad.Uint32()
		case unix.NFTA_GEN_PROC_PID:
			c.PID = ad.Uint32()
		case unix.NFTA_GEN_PROC_NAME:
			c.Comm = ad.String()
		}
	}
	return c
}
