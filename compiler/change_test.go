package compiler_test

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/testpolicy"
	"github.com/portfw/portfw/model"
)

// randomPolicy writes a policy of n reservations of varied kinds.
func randomPolicy(r *rand.Rand, n int, settings string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\nsettings: { %s }\nreservations:\n", settings)
	for i := range n {
		b.WriteString(randomItem(r, i))
	}
	return b.String()
}

// randomItem is reservation ri, on ports from 10000+10i.
func randomItem(r *rand.Rand, i int) string {
	{
		port := 10000 + 10*i
		ports := fmt.Sprint(port)
		if r.IntN(4) == 0 {
			ports = fmt.Sprintf(`"%d-%d"`, port, port+r.IntN(9))
		}
		protos := []string{"[tcp]", "[udp]", "[tcp, udp]", "[udplite]"}[r.IntN(4)]
		owner := []string{fmt.Sprintf("users: [%d]", 1000+r.IntN(50)), fmt.Sprintf(`users: ["%d-%d"]`, 2000, 2000+r.IntN(100)),
			"groups: [voip]", fmt.Sprintf("users: [alice, %d], groups: [%d]", 3000+r.IntN(5), 4000+r.IntN(5))}[r.IntN(4)]
		addr := ""
		if r.IntN(6) == 0 {
			addr = []string{", addresses: [192.0.2.1]", `, addresses: ["2001:db8::/64"]`, ", addresses: [192.0.2.0/24, 2001:db8::1]"}[r.IntN(3)]
		}
		return fmt.Sprintf("  - { name: r%d, ports: [%s], protocols: %s, owner: { %s }%s }\n", i, ports, protos, owner, addr)
	}
}

// elements is a ruleset's elements as "set element" strings.
func elements(rs *compiler.Ruleset) map[string]bool {
	out := map[string]bool{}
	for _, s := range rs.Sets {
		for _, e := range s.Elements {
			e.Packets, e.Bytes = 0, 0
			out[s.Name+" "+fmt.Sprint(e)] = true
		}
	}
	return out
}

// TestChangeEqualsCompare: for random edits of random policies, the change
// computed reservation by reservation is the one comparing the two compiled
// tables gives, and applying its delta to the old table's elements gives
// the new table's.
func TestChangeEqualsCompare(t *testing.T) {
	deltas := 0
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 3))
		settings := []string{"", "allow_root: false", "log: false"}[r.IntN(3)]
		oldText := randomPolicy(r, 8+r.IntN(8), settings)
		lines := strings.Split(oldText, "\n")
		// Edit: replace, drop or add a few reservations, or change settings.
		r2 := rand.New(rand.NewPCG(seed, 4))
		for range 1 + r.IntN(3) {
			i := 3 + r.IntN(len(lines)-4)
			switch r.IntN(4) {
			case 0:
				// Same name and base port, anything else new.
				var k int
				if _, err := fmt.Sscanf(lines[i], "  - { name: r%d,", &k); err != nil {
					continue
				}
				lines[i] = strings.TrimSuffix(randomItem(r2, k), "\n")
			case 1:
				lines = slices.Delete(lines, i, i+1)
			case 2:
				lines[i] = strings.Replace(lines[i], "name: r", "name: renamed", 1)
			case 3:
				if r.IntN(4) == 0 {
					lines[1] = "settings: { allow_root: false }"
				}
			}
		}
		newText := strings.Join(lines, "\n")
		oldRes, newRes := testpolicy.Resolve(t, "old.yaml", oldText), testpolicy.Resolve(t, "new.yaml", newText)
		// The root-only entries of a lowered threshold, one per protocol,
		// come, go or change.
		guard := func(r *rand.Rand) []model.Reservation {
			var g []model.Reservation
			for _, p := range []model.Protocol{model.TCP, model.UDP, model.UDPLite} {
				if r.IntN(2) == 0 {
					g = append(g, model.Reservation{Name: model.GuardName, Protocols: []model.Protocol{p},
						Ports: []model.PortRange{{Lo: 80, Hi: 80 + uint16(r.IntN(3))}}, Owners: model.Owners{Root: true}})
				}
			}
			return g
		}
		oldRes.Guard, newRes.Guard = guard(r), guard(r)
		oldRS, newRS := compiler.Compile(oldRes), compiler.Compile(newRes)
		wantC, wantD, wantOK := compiler.Compare(oldRS, newRS)
		gotC, gotD, gotOK := compiler.Change(oldRes, newRes)
		if gotOK != wantOK || !reflect.DeepEqual(nonNilChanges(gotC), nonNilChanges(wantC)) {
			t.Fatalf("seed %d: Change = %+v ok=%v, Compare = %+v ok=%v\nold:\n%s\nnew:\n%s", seed, gotC, gotOK, wantC, wantOK, oldText, newText)
		}
		if !gotOK {
			continue
		}
		deltas++
		if fmt.Sprint(sortedDelta(gotD)) != fmt.Sprint(sortedDelta(wantD)) {
			t.Fatalf("seed %d: deltas differ:\nChange:  %v\nCompare: %v", seed, sortedDelta(gotD), sortedDelta(wantD))
		}
		applied := elements(oldRS)
		for set, es := range gotD.Del {
			for _, e := range es {
				delete(applied, set+" "+fmt.Sprint(e))
			}
		}
		for set, es := range gotD.Add {
			for _, e := range es {
				applied[set+" "+fmt.Sprint(e)] = true
			}
		}
		if !reflect.DeepEqual(applied, elements(newRS)) {
			t.Fatalf("seed %d: the delta applied to the old table does not give the new one", seed)
		}
	}
	if deltas < 50 {
		t.Errorf("only %d of 200 edits were deltas: the test exercises little", deltas)
	}
}

// nonNilChanges is c's exported fields with nil lists made empty, and its
// plan, for comparing the Changes of two paths.
func nonNilChanges(c compiler.Changes) any {
	out := compiler.Changes{Added: c.Added, Removed: c.Removed, Changed: c.Changed, RulesChanged: c.RulesChanged, Unlabelled: c.Unlabelled}
	for _, l := range []*[]string{&out.Added, &out.Removed, &out.Changed} {
		if *l == nil {
			*l = []string{}
		}
	}
	p := c.Plan()
	p.Rules = nil // Change words setting changes, Compare only rule changes
	return []any{out, p}
}

func sortedDelta(d compiler.Delta) []string {
	var out []string
	for set, es := range d.Del {
		for _, e := range es {
			out = append(out, "-"+set+" "+fmt.Sprint(e))
		}
	}
	for set, es := range d.Add {
		for _, e := range es {
			out = append(out, "+"+set+" "+fmt.Sprint(e))
		}
	}
	slices.Sort(out)
	return out
}

// TestSetsOfAgreesWithElements: the shortcut that says which sets a
// reservation uses agrees with the elements it compiles to.
func TestSetsOfAgreesWithElements(t *testing.T) {
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 5))
		settings := []string{"", "allow_root: false"}[r.IntN(2)]
		res := testpolicy.Resolve(t, "p.yaml", randomPolicy(r, 1+r.IntN(4), settings))
		if r.IntN(2) == 0 { // the root-only entries of a lowered threshold
			res.Guard = []model.Reservation{{Name: model.GuardName, Protocols: []model.Protocol{model.UDP},
				Ports: []model.PortRange{{Lo: 80, Hi: 80 + uint16(r.IntN(2))}}, Owners: model.Owners{Root: true}}}
		}
		if got, want := compiler.UsedSets(res), compiler.UsedSetsByElements(res); got != want {
			t.Fatalf("seed %d: sets %v, elements say %v", seed, got, want)
		}
	}
}
