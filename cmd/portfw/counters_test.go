package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/nft"
	"github.com/portfw/portfw/testenv"
)

// countersPolicy: two reservations of the same owner, so a drop on one must
// not show on the other.
const countersPolicy = `version: 1
settings: { bind_guard: off }
reservations:
  - name: alpha
    ports: [8080]
    owner: { users: [%[1]d] }
  - name: beta
    ports: [8443]
    owner: { users: [%[1]d] }
`

// applyAndOpen applies a policy in the server namespace and opens
// nftables there to read the table back.
func applyAndOpen(t *testing.T, w *world, path string) (*nft.Conn, string) {
	t.Helper()
	mustPortfw(t, w.Server, "apply", "-f", path)
	k, err := nft.Open(w.Server.Fd(t))
	if err != nil {
		t.Fatalf("open nftables: %v", err)
	}
	return k, "portfw"
}

func summaries(t *testing.T, k *nft.Conn, table string) map[string]compiler.Summary {
	t.Helper()
	rs, err := k.Read(table)
	if err != nil {
		t.Fatalf("read table: %v", err)
	}
	out := map[string]compiler.Summary{}
	for _, s := range compiler.Summarize(rs) {
		out[s.Name] = s
	}
	return out
}

// TestStatusCounters: a squatter blocked on beta raises beta's drop
// counters and nothing else; an owner served on alpha leaves alpha's at 0.
func TestStatusCounters(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	path := writePolicy(t, fmt.Sprintf(countersPolicy, w.owner.UID))
	k, table := applyAndOpen(t, w, path)

	owner := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: w.owner})
	ownerUDP := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(8080), As: w.owner})
	for _, addr := range []string{"v4", "v6"} {
		a := w.v4(8080)
		if addr == "v6" {
			a = w.v6(8080)
		}
		testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: a}), owner.Reply)
		testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Proto: testenv.UDP, Addr: a}), ownerUDP.Reply)
	}
	if got := summaries(t, k, table); got["alpha"].DroppedPackets != 0 || got["alpha"].DroppedBytes != 0 ||
		got["beta"].DroppedPackets != 0 || got["beta"].DroppedBytes != 0 {
		t.Fatalf("counters after owner traffic only: %+v, want all 0", got)
	}

	w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8443), As: w.squat})
	w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(8443), As: w.squat})
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8443)}))
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(8443)}))
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Proto: testenv.UDP, Addr: w.v4(8443)}))
	// More owner traffic after the drops: still nothing counted on alpha.
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8080)}), owner.Reply)

	got := summaries(t, k, table)
	if a := got["alpha"]; a.DroppedPackets != 0 || a.DroppedBytes != 0 {
		t.Errorf("alpha (owner served): dropped %d packets, %d bytes; want 0", a.DroppedPackets, a.DroppedBytes)
	}
	// At least a SYN-ACK per TCP client and the UDP reply were dropped.
	b := got["beta"]
	if b.DroppedPackets < 3 || b.DroppedBytes < 3*40 {
		t.Errorf("beta (squatted): dropped %d packets, %d bytes; want at least 3 packets", b.DroppedPackets, b.DroppedBytes)
	}

	// The CLI reports the same counters. The squatter's listener keeps
	// retransmitting SYN-ACKs, so beta's may have grown since.
	out := mustPortfw(t, w.Server, "status", "-f", path, "--json")
	var st struct {
		Reservations []struct {
			Name           string  `json:"name"`
			DroppedPackets *uint64 `json:"dropped_packets"`
			DroppedBytes   *uint64 `json:"dropped_bytes"`
		} `json:"reservations"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("parse status JSON: %v\n%s", err, out)
	}
	if len(st.Reservations) != 2 || st.Reservations[0].Name != "alpha" || st.Reservations[1].Name != "beta" {
		t.Fatalf("status reservations: want alpha and beta:\n%s", out)
	}
	for _, r := range st.Reservations {
		if r.DroppedPackets == nil || r.DroppedBytes == nil {
			t.Fatalf("status lacks dropped_packets or dropped_bytes for %s:\n%s", r.Name, out)
		}
	}
	a, bb := st.Reservations[0], st.Reservations[1]
	if *a.DroppedPackets != 0 || *a.DroppedBytes != 0 {
		t.Errorf("status: alpha dropped %d packets, %d bytes; want 0", *a.DroppedPackets, *a.DroppedBytes)
	}
	if *bb.DroppedPackets < b.DroppedPackets || *bb.DroppedBytes < b.DroppedBytes {
		t.Errorf("status: beta dropped %d packets, %d bytes; want at least what nft read (%d, %d)",
			*bb.DroppedPackets, *bb.DroppedBytes, b.DroppedPackets, b.DroppedBytes)
	}
}

// nfLogAllNetns makes the kernel log for every network namespace: nf_log
// writes nothing for packets of a namespace other than the initial one
// unless it is 1. The sysctl exists only in the initial namespace.
const nfLogAllNetns = "/proc/sys/net/netfilter/nf_log_all_netns"

// TestDropLog: drops are written to the kernel log with portfw's prefix,
// the reserved port, and the socket's uid when the packet carries a full
// socket (a UDP reply does; a listener's SYN-ACK only has a request socket).
func TestDropLog(t *testing.T) {
	testenv.RequireNetNS(t)
	old, err := os.ReadFile(nfLogAllNetns)
	if err != nil {
		testenv.Require(t, fmt.Sprintf("read %s: %v (run from the initial network namespace: drops in test namespaces are logged only with it set)", nfLogAllNetns, err))
	}
	kmsg, err := os.OpenFile("/dev/kmsg", os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		testenv.Require(t, fmt.Sprintf("open /dev/kmsg: %v", err))
	}
	defer kmsg.Close()
	// Only records written from now on.
	if _, err := kmsg.Seek(0, 2); err != nil {
		t.Fatalf("seek /dev/kmsg: %v", err)
	}
	if err := os.WriteFile(nfLogAllNetns, []byte("1"), 0o644); err != nil {
		t.Fatalf("set nf_log_all_netns: %v", err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(nfLogAllNetns, old, 0o644); err != nil {
			t.Errorf("restore nf_log_all_netns: %v", err)
		}
	})

	// An unusual port, so lines of other tests running at the same time
	// cannot be mistaken for this one's.
	const port = 18543
	w := setup(t, "")
	path := writePolicy(t, fmt.Sprintf("version: 1\nsettings: { bind_guard: off }\nreservations:\n  - name: logged\n    ports: [%d]\n    owner: { users: [%d] }\n", port, w.owner.UID))
	mustPortfw(t, w.Server, "apply", "-f", path)
	w.Server.Serve(t, testenv.ServeConfig{Addr: any6(port), As: w.squat})
	w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(port), As: w.squat})
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(port)}))
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Proto: testenv.UDP, Addr: w.v4(port)}))

	spt := " SPT=" + strconv.Itoa(port) + " "
	uid := " UID=" + strconv.FormatUint(uint64(w.squat.UID), 10) + " "
	var lines []string
	tcpSeen, udpSeen := false, false
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 8192)
	for !(tcpSeen && udpSeen) && time.Now().Before(deadline) {
		n, err := kmsg.Read(buf)
		switch {
		case errors.Is(err, syscall.EAGAIN):
			time.Sleep(50 * time.Millisecond)
			continue
		case errors.Is(err, syscall.EPIPE):
			continue // records were overwritten before we read them
		case err != nil:
			t.Fatalf("read /dev/kmsg: %v", err)
		}
		// A record is "prio,seq,time,flags;message\n".
		_, msg, _ := bytes.Cut(buf[:n], []byte(";"))
		line := strings.TrimSpace(string(msg))
		if !strings.Contains(line, compiler.LogPrefixOut) || !strings.Contains(line, spt) {
			continue
		}
		lines = append(lines, line)
		tcpSeen = tcpSeen || strings.Contains(line, " PROTO=TCP ")
		udpSeen = udpSeen || (strings.Contains(line, " PROTO=UDP ") && strings.Contains(line, uid))
	}
	if !tcpSeen || !udpSeen {
		t.Errorf("want kernel log lines %q for the TCP SYN-ACK and the UDP reply (with%s), got %q", compiler.LogPrefixOut, uid, lines)
	}
}
