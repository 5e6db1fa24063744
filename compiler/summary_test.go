package compiler_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/testpolicy"
	"github.com/portfw/portfw/model"
)

// TestSummarize: a ruleset explains itself without the policy: per
// reservation its ports (protocols with the same ports together, address
// scopes apart), owners and counters.
func TestSummarize(t *testing.T) {
	rs := testpolicy.Compile(t, `version: 1
reservations:
  - name: sip
    ports: [5060, "5070-5079"]
    owner: { users: [_sipd], groups: [voip] }
  - name: web
    ports: [80, 443]
    protocols: [tcp]
    owner: { users: [www-data, "1200-1299"] }
  - name: scoped
    ports: [8080]
    protocols: [udp, udplite]
    addresses: [192.0.2.10, "2001:db8::/64"]
    owner: { users: [alice] }
`)
	got := map[string]string{}
	for _, s := range compiler.Summarize(rs) {
		var ports []string
		for _, g := range s.Ports {
			ports = append(ports, g.String())
		}
		got[s.Name] = fmt.Sprintf("%s uids=%v gids=%v dropped=%d/%d", strings.Join(ports, " "), s.UIDs, s.GIDs, s.DroppedPackets, s.DroppedBytes)
	}
	want := map[string]string{
		"sip":    "5060,5070-5079/tcp+udp uids=[5060] gids=[2000] dropped=0/0",
		"web":    "80,443/tcp uids=[33 1200-1299] gids=[] dropped=0/0",
		"scoped": "8080/udp+udplite@192.0.2.10 8080/udp+udplite@2001:db8::/64 uids=[1000] gids=[] dropped=0/0",
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s:\n got %s\nwant %s", name, got[name], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("summaries %v", got)
	}
}

// TestSummarizeCounts: the count sets' keys go to the reservation whose
// membership element holds them (exact, inside a range and at its ends),
// by direction; keys no reservation holds (a port counted before an edit
// removed it) are left out; the address-scoped reservations' counters are
// their drop sets' elements'.
func TestSummarizeCounts(t *testing.T) {
	rs := testpolicy.Compile(t, `version: 1
reservations:
  - name: sip
    ports: [5060]
    owner: { users: [_sipd] }
  - name: games
    ports: ["27015-27030", "65530-65535"]
    protocols: [udp]
    owner: { users: [alice] }
  - name: web
    ports: [80]
    protocols: [tcp]
    addresses: ["2001:db8::/64", 192.0.2.10]
    owner: { users: [www-data] }
  - name: web-internal
    ports: [80]
    protocols: [tcp]
    addresses: [198.51.100.0/24]
    owner: { users: [alice] }
`)
	count := func(set string, keys ...compiler.Element) {
		for _, s := range rs.Sets {
			if s.Name == set {
				if !s.Dynamic {
					t.Fatalf("%s is not a count set", set)
				}
				s.Counts = append(s.Counts, keys...)
				return
			}
		}
		t.Fatalf("no set %s", set)
	}
	key := func(addr string, proto model.Protocol, port uint16, packets uint64) compiler.Element {
		e := compiler.Element{Proto: proto, Ports: model.Port(port), Packets: packets, Bytes: 100 * packets}
		if addr != "" {
			a := netip.MustParseAddr(addr)
			e.Addr = netip.PrefixFrom(a, a.BitLen())
		}
		return e
	}
	count("cnt_in", key("", model.UDP, 5060, 1), key("", model.TCP, 5060, 2), key("", model.UDP, 27015, 4), key("", model.UDP, 27030, 8),
		key("", model.UDP, 27031, 1000), key("", model.TCP, 27020, 1000), key("", model.UDP, 65535, 16), key("", model.UDP, 9, 1000))
	count("cnt_out", key("", model.UDP, 27022, 32))
	// The address-scoped reservations count on their drop sets' elements.
	counted := func(set, prefix string, packets uint64) {
		for _, s := range rs.Sets {
			for i, e := range s.Elements {
				if s.Name == set && e.Addr == netip.MustParsePrefix(prefix) {
					s.Elements[i].Packets, s.Elements[i].Bytes = packets, 100*packets
					return
				}
			}
		}
		t.Fatalf("no element %s in %s", prefix, set)
	}
	counted("drop4_in", "192.0.2.10/32", 64)
	counted("drop4_in", "198.51.100.0/24", 128)
	counted("drop6_out", "2001:db8::/64", 256)
	got := map[string]string{}
	for _, s := range compiler.Summarize(rs) {
		got[s.Name] = fmt.Sprintf("in %d/%d out %d/%d total %d/%d", s.DroppedIn.Packets, s.DroppedIn.Bytes, s.DroppedOut.Packets, s.DroppedOut.Bytes, s.DroppedPackets, s.DroppedBytes)
	}
	want := map[string]string{
		"sip":          "in 3/300 out 0/0 total 3/300",
		"games":        "in 28/2800 out 32/3200 total 60/6000",
		"web":          "in 64/6400 out 256/25600 total 320/32000",
		"web-internal": "in 128/12800 out 0/0 total 128/12800",
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: got %s, want %s", name, got[name], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("summaries %v, want only %v", got, want)
	}
}
