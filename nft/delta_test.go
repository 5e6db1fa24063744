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
// deletes; the table then reads back as the new ruleset, and the counter of
// an element the delta did not touch keeps counting from where it was.
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
	// Give web's tcp/80 drop counter a value: the delta must not reset it.
	ns.Nft(t, "delete element inet portfw drop_out { tcp . 80 }\nadd element inet portfw drop_out { tcp . 80 counter packets 7 bytes 700 comment \"web\" }")
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
	for _, s := range back.Sets {
		for _, e := range s.Elements {
			if s.Name == "drop_out" && e.Comment == "web" && e.Ports.Lo == 80 && e.Packets != 7 {
				t.Errorf("counter of the untouched element tcp . 80 is %d packets after the delta, want 7", e.Packets)
			}
		}
	}
	// A rules change is not a delta.
	if _, ok := compiler.ElementDelta(old, compileText(t, "version: 1\nsettings: { allow_root: false }\n"+strings.SplitN(base, "\n", 2)[1])); ok {
		t.Error("ElementDelta accepted a change of settings")
	}
}
