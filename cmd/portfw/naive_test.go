package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/portfw/portfw/testenv"
)

// TestNaiveRuleLeaks is the control for the squatter tests: with only the
// naive rule "tcp sport P meta skuid != OWNER drop", the same squatters
// get traffic through (the syncookie and orphan paths carry no socket),
// so the harness does see the leaks portfw's ruleset closes.
func TestNaiveRuleLeaks(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	// Every SYN-ACK a cookie: the unattributed path, deterministically.
	w.Server.Sysctl(t, "net.ipv4.tcp_syncookies", "2")
	w.Server.Nft(t, fmt.Sprintf(`table inet naive {
	chain out { type filter hook output priority 0; policy accept; tcp sport { 8080, 8081 } meta skuid != %d drop; }
}`, w.owner.UID))
	t.Run("syncookies", func(t *testing.T) {
		sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: w.squat, ZeroBacklog: true, AcceptDelay: 2 * time.Second})
		got := 0
		for _, r := range w.Client.DialN(t, testenv.DialConfig{Addr: w.v4(8080), Request: "secret", Timeout: 4 * time.Second}, 6) {
			got += len(r.Received)
		}
		if got == 0 && len(sq.Received(t)) == 0 {
			t.Error("naive rule: no byte leaked through the syncookie path; the squatter tests would prove nothing")
		}
	})
	t.Run("orphan", func(t *testing.T) {
		// The handshake completes by syncookie; the squatter's reply is
		// attributed and dropped, its retransmits leave from the orphan.
		w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8081), As: w.squat, ZeroBacklog: true, ReplyAndClose: true})
		got := 0
		for _, r := range w.Client.DialN(t, testenv.DialConfig{Addr: w.v4(8081), Timeout: 3 * time.Second}, 4) {
			got += len(r.Received)
		}
		if got == 0 {
			t.Error("naive rule: no orphaned socket's retransmit arrived; the orphan test would prove nothing")
		}
	})
}
