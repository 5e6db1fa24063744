package nft

import (
	"context"
	"errors"
	"fmt"

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
			for _, m := range msgs {
				if m.Header.Type == newGen {
					signal()
					break
				}
			}
		}
	}()
	return ch, nil
}
