package compiler_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/testpolicy"
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
