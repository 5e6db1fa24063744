package main

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/portfw/portfw/testenv"
)

// These tests send real packets through the less common set lookups: the
// interval sets (port ranges, uid ranges: keys converted to big endian
// before the lookup), group owners, and address-scoped sets.

func TestRangesOnTheWire(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	// A port range owned by a uid range (a true range, so the interval
	// set) around the owner's uid that leaves out the other test users.
	others := map[uint32]bool{w.squat.UID: true, w.worker.UID: true}
	lo, hi := w.owner.UID, w.owner.UID
	switch {
	case !others[hi+1]:
		hi++
	case lo > 0 && !others[lo-1]:
		lo--
	default:
		t.Fatalf("no free uid beside the owner's %d to make a range (test users %v)", w.owner.UID, others)
	}
	mustPortfw(t, w.Server, "apply", "-f", writePolicy(t, fmt.Sprintf(`version: 1
settings: { bind_guard: off }
reservations:
  - name: range
    ports: ["20000-20999"]
    owner: { users: ["%d-%d"] }
`, lo, hi)))
	for _, port := range []uint16{20000, 20500, 20999} {
		srv := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(port), As: w.owner})
		testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(port)}), srv.Reply)
		testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(port)}), srv.Reply)
		srv.Stop(t)
	}
	udp := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(20001), As: w.owner})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Proto: testenv.UDP, Addr: w.v4(20001)}), udp.Reply)
	sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(20002), As: w.squat})
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(20002)}))
	if len(sq.Received(t)) != 0 {
		t.Error("squatter inside a reserved port range read data")
	}
	free := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(21000), As: w.squat})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(21000)}), free.Reply)
}

func TestGroupOwner(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	// The worker's primary group owns the port: the worker is an owner by
	// gid, the squatter (another group) is not.
	mustPortfw(t, w.Server, "apply", "-f", writePolicy(t, fmt.Sprintf(`version: 1
settings: { bind_guard: off }
reservations:
  - name: grp
    ports: [7070, "7100-7199"]
    protocols: [tcp]
    owner: { groups: [%d] }
`, w.worker.GID)))
	for _, port := range []uint16{7070, 7150} {
		srv := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(port), As: w.worker})
		testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(port)}), srv.Reply)
		srv.Stop(t)
		sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(port), As: w.squat})
		testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(port)}))
		sq.Stop(t)
	}
}

// TestAddressScoped: a reservation limited to one address holds the port
// there only: a squatter bound to every address gets nothing on the
// reserved address and is served on the others, and the owner is served on
// the reserved address.
func TestAddressScoped(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	mustPortfw(t, w.Server, "apply", "-f", writePolicy(t, fmt.Sprintf(`version: 1
settings: { bind_guard: off }
reservations:
  - name: v4only
    ports: [8080]
    protocols: [tcp]
    owner: { users: [%[1]d] }
    addresses: [%[2]s]
  - name: v6net
    ports: [8081]
    protocols: [tcp]
    owner: { users: [%[1]d] }
    addresses: ["2001:db8::/64"]
`, w.owner.UID, w.ServerV4)))
	sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: w.squat})
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8080)}))
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(8080)}), sq.Reply)
	sq.Stop(t)
	own := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: w.owner})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8080)}), own.Reply)
	own.Stop(t)
	sq6 := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8081), As: w.squat})
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(8081)}))
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8081)}), sq6.Reply)
}

// TestLoopback: client and server on one host, over lo, v4 and v6.
func TestLoopback(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	w.applyWith(t, webPolicy, "bind_guard: off")
	own := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8080), As: w.owner})
	sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8443), As: w.squat})
	for _, ip := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
		testenv.Delivered(t, w.Server.Dial(t, testenv.DialConfig{Addr: netip.AddrPortFrom(ip, 8080), As: w.squat}), own.Reply)
		testenv.Blocked(t, w.Server.Dial(t, testenv.DialConfig{Addr: netip.AddrPortFrom(ip, 8443), As: w.owner}))
	}
	if len(sq.Received(t)) != 0 {
		t.Error("squatter read data over loopback")
	}
}
