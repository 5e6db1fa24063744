package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// newGen is the message the kernel multicasts after every committed
// nftables transaction: (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN.
const newGen = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN)

// WatchChanges signals on the returned channel after nftables transactions
// commit in the namespace of netnsFd (the caller's when < 0), made by any
// process but this one: the cue to compare portfw's table with what it
// should be. The kernel's NEWGEN message names the committing process, so
// this process's own commits are not reported. Bursts coalesce into one
// pending signal. Only NEWGEN messages are decoded, so a transaction of 10k
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
				if m.Header.Type == newGen && !ownThread(genPID(m.Data)) {
					signal()
					break
				}
			}
		}
	}()
	return ch, nil
}

// ownThread reports whether tid is a thread of this process. The kernel
// names the committing thread, not the process, and Go commits from any of
// its threads. An id from another pid namespace matches nothing here, so
// such commits count as someone else's: the safe side.
func ownThread(tid uint32) bool {
	if tid == 0 {
		return false
	}
	_, err := os.Stat("/proc/self/task/" + strconv.FormatUint(uint64(tid), 10))
	return err == nil
}

// genPID is the thread that committed the transaction a NEWGEN message
// announces (NFTA_GEN_PROC_PID), or 0 if the message does not say.
func genPID(data []byte) uint32 {
	if len(data) < 4 { // struct nfgenmsg
		return 0
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return 0
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() == unix.NFTA_GEN_PROC_PID {
			return ad.Uint32()
		}
	}
	return 0
}
