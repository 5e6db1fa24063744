package compiler_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/portfw/portfw/bench/gen"
	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/testpolicy"
	"github.com/portfw/portfw/model"
)

const planBase = `version: 1
reservations:
  - name: web
    ports: [80, 443]
    protocols: [tcp]
    owner: { users: [www-data] }
  - name: sip
    ports: [5060, "5070-5079"]
    owner: { users: [alice, "2000-2099"], groups: [4000] }
  - name: old
    ports: [7000]
    owner: { users: [alice] }
  - name: lan
    ports: [8080]
    protocols: [tcp]
    addresses: [10.0.0.0/8]
    owner: { users: [alice] }
`

// planLines is a Plan as diff prints it.
func planLines(c compiler.Changes) []string {
	p := c.Plan()
	sign := map[compiler.Action]string{compiler.ActionAdd: "+ ", compiler.ActionRemove: "- ", compiler.ActionChange: "~ "}
	var out []string
	for _, d := range p.Reservations {
		out = append(out, sign[d.Action]+d.String())
	}
	for _, s := range p.Unlabelled {
		out = append(out, "? "+s.String())
	}
	for _, r := range p.Rules {
		out = append(out, "rules: "+r)
	}
	return out
}

// TestPlan: each kind of edit is told in words, the same by Compare (the
// kernel's table against the policy's) and by Change (two policies).
func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		name, from, to string
		want           []string
	}{
		{"port added", "[80, 443]", "[80, 443, 8443]", []string{"~ web: +8443/tcp"}},
		{"port moved", "[80, 443]", "[80, 8443]", []string{"~ web: +8443/tcp, -443/tcp"}},
		{"protocol added", "ports: [80, 443]\n    protocols: [tcp]", "ports: [80, 443]\n    protocols: [tcp, udp]", []string{"~ web: +80,443/udp"}},
		{"owners", `[alice, "2000-2099"], groups: [4000]`, `[alice, 3000], groups: [4001]`,
			[]string{"~ sip: owners +uid 3000 -uid 2000-2099 +gid 4001 -gid 4000"}},
		{"address", "addresses: [10.0.0.0/8]", "addresses: [10.0.0.0/8, 192.168.0.0/16]", []string{"~ lan: addresses +192.168.0.0/16"}},
		{"removed and added", "name: old\n    ports: [7000]", "name: new\n    ports: [7001]",
			[]string{"+ new: 7001/tcp+udp, owners uid 1000", "- old: 7000/tcp+udp, owners uid 1000"}},
		{"nothing", "", "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			to := strings.Replace(planBase, tc.from, tc.to, 1)
			c, _, _ := compiler.Compare(testpolicy.Compile(t, planBase), testpolicy.Compile(t, to))
			if got := planLines(c); !slices.Equal(got, tc.want) {
				t.Errorf("Compare's plan:\n got %q\nwant %q", got, tc.want)
			}
			c, _, _ = compiler.Change(testpolicy.Resolve(t, "p.yaml", planBase), testpolicy.Resolve(t, "p.yaml", to))
			if got := planLines(c); !slices.Equal(got, tc.want) {
				t.Errorf("Change's plan:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestPlanRules: settings changes are named when both policies are known;
// against the kernel's table the rules that change are shown.
func TestPlanRules(t *testing.T) {
	to := strings.Replace(planBase, "version: 1\n", "version: 1\nsettings: { allow_root: false, log: false }\n", 1)
	c, _, ok := compiler.Change(testpolicy.Resolve(t, "p.yaml", planBase), testpolicy.Resolve(t, "p.yaml", to))
	if ok {
		t.Fatal("a settings change must replace the table")
	}
	rules := c.Plan().Rules
	for _, want := range []string{"settings.allow_root: true -> false", "settings.log: rate 10/minute -> off",
		"chain out_check: - meta skuid 0 ct mark set ct mark & 0xfdffffff | 0x01000000 accept"} {
		if !slices.Contains(rules, want) {
			t.Errorf("rules %q lack %q", rules, want)
		}
	}
	c = compiler.Diff(nil, testpolicy.Compile(t, planBase))
	if got := c.Plan().Rules; !slices.Equal(got, []string{"table inet portfw is created"}) {
		t.Errorf("no table yet: rules %q", got)
	}
	if n := len(c.Plan().Reservations); n != 4 {
		t.Errorf("no table yet: %d reservations in the plan, want all 4", n)
	}
}

// TestPlanHandEdits: elements added by hand without a reservation's name
// are shown with their content, never as a blank name; a reservation's
// element deleted by hand is counted.
func TestPlanHandEdits(t *testing.T) {
	want := testpolicy.Compile(t, planBase)
	kernel := testpolicy.Compile(t, planBase)
	for _, s := range kernel.Sets {
		switch s.Name {
		case "own_uid":
			s.Elements = slices.DeleteFunc(s.Elements, func(e compiler.Element) bool { return e.Comment == "web" && e.Ports.Lo == 443 })
			s.Elements = append(s.Elements, compiler.Element{Proto: model.TCP, Ports: model.Port(80), ID: model.ID(65534)})
		case "own4_uid":
			s.Elements = append(s.Elements, compiler.Element{Addr: netip.MustParsePrefix("10.1.0.0/16"), Proto: model.TCP, Ports: model.Port(8080), ID: model.ID(65534)})
		}
	}
	c, _, _ := compiler.Compare(kernel, want)
	if c.InSync() || c.Unlabelled != 2 {
		t.Fatalf("in sync %v, %d unlabelled; want out of sync with 2", c.InSync(), c.Unlabelled)
	}
	got := planLines(c)
	wantLines := []string{
		"~ web: the kernel's elements were edited by hand (1 to restore, 0 to remove)",
		"? own_uid { tcp . 80 . 65534 }",
		"? own4_uid { 10.1.0.0/16 . tcp . 8080 . 65534 }",
	}
	if !slices.Equal(got, wantLines) {
		t.Errorf("plan:\n got %q\nwant %q", got, wantLines)
	}
	if slices.Contains(c.Removed, "") || slices.Contains(c.Changed, "") {
		t.Errorf("a blank reservation name in %+v", c)
	}
}

// TestCreatedPlan: the plan of creating a table, worked out from the
// resolved policy (Created), is the plan worked out from the compiled
// table's elements (Diff against no table), for every golden policy, one
// with the root-only guard's entries, and a generated one with ranges.
func TestCreatedPlan(t *testing.T) {
	var cases []*model.Resolved
	dirs, err := filepath.Glob("testdata/*/policy.yaml")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no golden policies: %v", err)
	}
	for _, path := range dirs {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, testpolicy.Resolve(t, path, string(data)))
	}
	guarded := *testpolicy.Resolve(t, "guarded.yaml", planBase)
	guarded.Settings.AllowRoot = false
	for _, proto := range []model.Protocol{model.TCP, model.UDP} {
		guarded.Guard = append(guarded.Guard, model.Reservation{Name: model.GuardName, Protocols: []model.Protocol{proto},
			Ports: []model.PortRange{{Lo: 81, Hi: 442}, {Lo: 444, Hi: 1023}}, Owners: model.Owners{Root: true}})
	}
	cases = append(cases, &guarded)
	generated, err := gen.Spec{N: 300, Ranges: 4, Port: 11111, UID: 65534}.Resolved()
	if err != nil {
		t.Fatal(err)
	}
	cases = append(cases, generated)
	for i, r := range cases {
		rs := compiler.Compile(r)
		got, want := compiler.Created(r, rs), compiler.Diff(nil, rs)
		if !slices.Equal(got.Added, want.Added) || got.RulesChanged != want.RulesChanged {
			t.Fatalf("case %d: Created %+v, Diff %+v", i, got, want)
		}
		if gp, wp := got.Plan(), want.Plan(); !reflect.DeepEqual(gp, wp) {
			t.Errorf("case %d: plan from the policy:\n%+v\nfrom the table:\n%+v", i, gp, wp)
		}
		if len(r.Reservations) > 0 && len(want.Plan().Reservations) == 0 {
			t.Errorf("case %d: an empty plan compares nothing", i)
		}
	}
}
