package compiler_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/testpolicy"
)

// compareBase is the policy the comparisons start from.
const compareBase = `version: 1
reservations:
  - name: web
    ports: [80, 443]
    protocols: [tcp]
    owner: { users: [www-data] }
  - name: sip
    ports: [5060, "5070-5079"]
    owner: { users: [alice, "2000-2099"] }
  - name: old
    ports: [7000]
    owner: { users: [alice] }
`

// TestCompareAgreesWithDiff: the one-pass Compare reports the same
// changes as Diff, and its delta turns old into new.
func TestCompareAgreesWithDiff(t *testing.T) {
	base := compareBase
	old := testpolicy.Compile(t, base)
	for _, tc := range []struct{ name, from, to string }{
		{"owner added", "[alice, \"2000", "[alice, 3000, \"2000"},
		{"port changed", "[80, 443]", "[80, 8443]"},
		{"reservation removed and added", "name: old\n    ports: [7000]", "name: new\n    ports: [7001]"},
		{"renamed", "name: old", "name: renamed"},
		{"settings", "version: 1\n", "version: 1\nsettings: { allow_root: false }\n"},
		{"nothing", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			new := testpolicy.Compile(t, strings.Replace(base, tc.from, tc.to, 1))
			c, d, ok := compiler.Compare(old, new)
			if want, got := nonNilChanges(compiler.Diff(old, new)), nonNilChanges(c); !reflect.DeepEqual(want, got) {
				t.Errorf("Compare's changes differ from Diff's:\n Diff    %+v\n Compare %+v", want, got)
			}
			if !ok {
				if !c.RulesChanged {
					t.Error("no delta, but the rules did not change")
				}
				return
			}
			// Apply the delta to old by hand: it must give new.
			got := map[string]map[string]bool{}
			for _, s := range old.Sets {
				got[s.Name] = map[string]bool{}
				for _, e := range s.Elements {
					got[s.Name][s.ElementText(e)] = true
				}
			}
			for name, es := range d.Del {
				for _, e := range es {
					delete(got[name], d.Sets[name].ElementText(e))
				}
			}
			for name, es := range d.Add {
				for _, e := range es {
					got[name][d.Sets[name].ElementText(e)] = true
				}
			}
			want := map[string]map[string]bool{}
			for _, s := range new.Sets {
				want[s.Name] = map[string]bool{}
				for _, e := range s.Elements {
					want[s.Name][s.ElementText(e)] = true
				}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("old + delta != new (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDiffFromNothing: against no table, Diff lists every reservation as
// added and the rules as changed, as it would against an empty table.
func TestDiffFromNothing(t *testing.T) {
	rs := testpolicy.Compile(t, compareBase+"  - name: scoped\n    ports: [8080]\n    addresses: [192.0.2.1]\n    owner: { users: [alice] }\n")
	got, want := compiler.Diff(nil, rs), compiler.Diff(&compiler.Ruleset{Table: rs.Table}, rs)
	if !reflect.DeepEqual(got.Added, want.Added) || got.Removed != nil || got.Changed != nil ||
		!got.RulesChanged || got.Unlabelled != 0 || !want.RulesChanged {
		t.Fatalf("Diff(nil) = %+v, against an empty table %+v", got, want)
	}
	if !reflect.DeepEqual(got.Added, []string{"old", "scoped", "sip", "web"}) {
		t.Fatalf("added %v", got.Added)
	}
}
