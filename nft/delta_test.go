package nft_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/testpolicy"
	"github.com/portfw/portfw/testenv"
)

var compileText = testpolicy.Compile

// TestApplyDelta: a membership-only change goes in as element adds and
// deletes; the table then reads back as the new ruleset, and the count
// sets' keys (the kernel's, not the policy's) keep their counters and are
// no difference from the policy.
func TestApplyDelta(t *testing.T) {
	testenv.RequireNetNS(t)
	const base = `version: 1
reservations:
  - name: web
    ports: [80, 443]
    protocols: [tcp]
    owner: { users: [www-data] }
  - name: sip
    ports: [5060, "5070-5079"]
    owner: { users: [alice, "2000-2099"] }
`
	old := compileText(t, base)
	changed := strings.NewReplacer("[80, 443]", "[80, 8443]", `"5070-5079"`, `"5070-5089"`, "alice,", "alice, 3000,").Replace(base)
	want := compileText(t, changed)
	d, ok := compiler.ElementDelta(old, want)
	if !ok || d.Empty() {
		t.Fatalf("ElementDelta: ok=%v empty=%v; want a non-empty element delta", ok, d.Empty())
	}
	ns := testenv.NewNS(t)
	c := open(t, ns)
	if err := c.Apply(old); err != nil {
		t.Fatal(err)
	}
	// Counted drops of web's tcp/80 and tcp/443: the delta must not reset
	// them, nor remove 443's (it counts what was dropped).
	ns.Nft(t, "add element inet portfw cnt_out { tcp . 80 counter packets 7 bytes 700, tcp . 443 counter packets 1 bytes 100 }")
	if err := c.ApplyDelta(d); err != nil {
		t.Fatalf("apply delta: %v", err)
	}
	back, err := c.Read(want.Table)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want.String(), back.String()); diff != "" {
		t.Errorf("table after delta (-want +got):\n%s", diff)
	}
	counted := map[uint16]uint64{}
	for _, s := range back.Sets {
		if s.Name == "cnt_out" {
			if len(s.Elements) != 0 || !s.Dynamic || !s.Counter {
				t.Fatalf("count set read back with elements %v, dynamic %v, counter %v", s.Elements, s.Dynamic, s.Counter)
			}
			for _, e := range s.Counts {
				counted[e.Ports.Lo] = e.Packets
			}
		}
	}
	if counted[80] != 7 || counted[443] != 1 || len(counted) != 2 {
		t.Errorf("counted after the delta: %v, want 80: 7 and 443: 1", counted)
	}
	if c, d, ok := compiler.Compare(back, want); !ok || !c.InSync() || !d.Empty() {
		t.Errorf("the table with counted keys compares with its policy as %+v, delta empty %v, ok %v; want in sync", c, d.Empty(), ok)
	}
	// A rules change is not a delta.
	if _, ok := compiler.ElementDelta(old, compileText(t, "version: 1\nsettings: { allow_root: false }\n"+strings.SplitN(base, "\n", 2)[1])); ok {
		t.Error("ElementDelta accepted a change of settings")
	}
}

// TestCountSetSize: a count set made with another size than the policy's
// (by hand: it would count fewer keys) reads back as a difference in the
// rules, so apply and the daemon replace the table; the table as nft -f
// makes it from the compiled text is in sync.
func TestCountSetSize(t *testing.T) {
	testenv.RequireNetNS(t)
	want := compileText(t, "version: 1\nreservations:\n  - { name: web, ports: [80], protocols: [tcp], owner: { users: [www-data] } }\n")
	ns := testenv.NewNS(t)
	c := open(t, ns)
	text := want.String()
	ns.Nft(t, text)
	back, err := c.Read(want.Table)
	if err != nil {
		t.Fatal(err)
	}
	if d := compiler.Diff(back, want); !d.InSync() {
		t.Fatalf("the compiled text loaded by nft -f: %+v, want in sync", d)
	}
	small := strings.Replace(text, "\t\tsize 131072\n\t\tflags dynamic\n", "\t\tsize 1\n\t\tflags dynamic\n", 1)
	if small == text {
		t.Fatal("no count set of size 131072 in the compiled text")
	}
	ns.Nft(t, small)
	if back, err = c.Read(want.Table); err != nil {
		t.Fatal(err)
	}
	if d := compiler.Diff(back, want); d.InSync() || !d.RulesChanged {
		t.Errorf("a count set of size 1: %+v, want the rules changed", d)
	}
}
