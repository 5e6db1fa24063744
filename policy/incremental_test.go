package policy

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// basePolicy has n reservations in the plain layout, in varied styles.
func basePolicy(n int) []string {
	items := make([]string, n)
	for i := range items {
		switch i % 4 {
		case 0:
			items[i] = fmt.Sprintf("  - name: r%d\n    ports: [%d]\n    owner: { users: [%d] }\n", i, 10000+i, 1000+i)
		case 1:
			items[i] = fmt.Sprintf("  - name: r%d\n    description: \"two\n      lines\"\n    ports: [%d, \"%d-%d\"]\n    protocols: [tcp]\n    owner:\n      users: [alice, \"2000-2010\"]\n      groups: [voip]\n", i, 10000+i, 20000+10*i, 20000+10*i+5)
		case 2:
			items[i] = fmt.Sprintf("  # reservation %d\n  - { name: r%d, ports: [%d], owner: { groups: [%d] } }\n\n", i, i, 10000+i, 3000+i)
		case 3:
			items[i] = fmt.Sprintf("  - name: r%d\n    ports:\n      - %d\n    addresses: [192.0.2.%d, \"2001:db8::%x/128\"]\n    owner: { users: [%d], units: [\"app%d@*.service\"], cgroups: [/x.slice/r%d] }  # trailing\n", i, 10000+i, i%250, i, 4000+i, i, i)
		}
	}
	return items
}

const header = "version: 1\n# a comment\nsettings:\n  log: false\nreservations:\n"

func join(items []string) []byte { return []byte(header + strings.Join(items, "")) }

// edits are changes an admin (or a fuzzer) makes to a policy.
var edits = []func(r *rand.Rand, items []string) ([]string, string){
	func(r *rand.Rand, it []string) ([]string, string) {
		i := r.IntN(len(it))
		it[i] = strings.Replace(it[i], fmt.Sprint(10000+i), fmt.Sprint(50000+r.IntN(1000)), 1)
		return it, "change a port"
	},
	func(r *rand.Rand, it []string) ([]string, string) {
		i := r.IntN(len(it))
		it[i] = strings.Replace(it[i], "users: [", "users: [9999, ", 1)
		return it, "add an owner"
	},
	func(r *rand.Rand, it []string) ([]string, string) {
		i := r.IntN(len(it) + 1)
		n := fmt.Sprintf("  - name: new%d\n    ports: [%d]\n    owner: { users: [1] }\n", r.IntN(1e6), 60000+r.IntN(5000))
		return append(it[:i], append([]string{n}, it[i:]...)...), "insert a reservation"
	},
	func(r *rand.Rand, it []string) ([]string, string) {
		if len(it) < 2 {
			return it, "nothing"
		}
		i := r.IntN(len(it))
		return append(it[:i], it[i+1:]...), "delete a reservation"
	},
	func(r *rand.Rand, it []string) ([]string, string) {
		i := r.IntN(len(it))
		it[i] += "  # a comment between\n\n"
		return it, "add a comment"
	},
	func(r *rand.Rand, it []string) ([]string, string) {
		i, j := r.IntN(len(it)), r.IntN(len(it))
		it[i], it[j] = it[j], it[i]
		return it, "swap two"
	},
	func(r *rand.Rand, it []string) ([]string, string) {
		i := r.IntN(len(it))
		it[i] = strings.Replace(it[i], "ports:", "ports: [oops", 1)
		return it, "break the YAML"
	},
	func(r *rand.Rand, it []string) ([]string, string) {
		i := r.IntN(len(it))
		it[i] = strings.Replace(it[i], "ports: [", "ports: [0, ", 1)
		return it, "an invalid port"
	},
	func(r *rand.Rand, it []string) ([]string, string) {
		i, j := r.IntN(len(it)), r.IntN(len(it))
		it[i] = strings.Replace(it[i], "name: ", "name: dup-", 1)
		it[j] = strings.Replace(it[j], "name: ", "name: dup-", 1)
		it[i] = strings.Replace(it[i], "name: dup-r", "name: dup-x", 1)
		it[j] = strings.Replace(it[j], "name: dup-r", "name: dup-x", 1)
		return it, "maybe duplicate names"
	},
	func(r *rand.Rand, it []string) ([]string, string) {
		i := r.IntN(len(it))
		it[i] = strings.Replace(it[i], "owner:", "owner: &o", 1)
		return it, "an anchor"
	},
	func(r *rand.Rand, it []string) ([]string, string) {
		return append(it, "settings2: 1\n"), "a key after reservations"
	},
	func(r *rand.Rand, it []string) ([]string, string) {
		i := r.IntN(len(it))
		it[i] = strings.Replace(it[i], "  - ", "    - ", 1)
		return it, "indent one item more"
	},
	func(r *rand.Rand, it []string) ([]string, string) {
		i := r.IntN(len(it))
		it[i] = strings.Replace(it[i], "\n", "\n\n", 1)
		return it, "a blank line inside"
	},
}

// checkSame parses data as one document, with Parse (which takes the
// plain layout's shortcut) and with rp, and compares.
func checkSame(t *testing.T, rp *Reparser, data []byte, what string) {
	t.Helper()
	want, wantErr := parseWhole("p.yaml", data, false)
	for _, p := range []struct {
		name  string
		parse func([]byte) (*Policy, error)
	}{{"Parse", func(b []byte) (*Policy, error) { return Parse("p.yaml", b) }}, {"Reparser", rp.Parse}} {
		got, gotErr := p.parse(data)
		if fmt.Sprint(wantErr) != fmt.Sprint(gotErr) {
			t.Fatalf("after %s: errors differ:\nwhole: %v\n%s: %v\n--- file ---\n%s", what, wantErr, p.name, gotErr, data)
		}
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("after %s: policies differ\n--- file ---\n%s\nwhole: %+v\n%s: %+v", what, data, want, p.name, got)
		}
	}
}

// TestReparserEqualsParse: after each of many random edits, the Reparser's
// result is exactly Parse's, errors and positions included.
func TestReparserEqualsParse(t *testing.T) {
	reused, versions := 0, 0
	defer func() {
		t.Logf("%d of %d versions parsed by reuse", reused, versions)
		if reused < versions/4 {
			t.Errorf("only %d of %d versions took the shortcut: the test exercises little of it", reused, versions)
		}
	}()
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 1))
		items := basePolicy(12)
		rp := NewReparser("p.yaml")
		checkSame(t, rp, join(items), "the first version")
		for range 40 {
			edited := append([]string(nil), items...)
			edited, what := edits[r.IntN(len(edits))](r, edited)
			before := rp.Reused
			checkSame(t, rp, join(edited), what)
			versions++
			reused += rp.Reused - before
			if _, err := parseWhole("p.yaml", join(edited), false); err == nil && !strings.Contains(what, "anchor") {
				items = edited // keep going from valid versions
			}
		}
	}
}

// TestReparserReuses: an edit of one reservation parses only that one.
func TestReparserReuses(t *testing.T) {
	items := basePolicy(8)
	rp := NewReparser("p.yaml")
	if _, err := rp.Parse(join(items)); err != nil {
		t.Fatal(err)
	}
	if rp.last == nil {
		t.Fatal("the plain layout was not recognised")
	}
	before := rp.last.index()
	items[3] = strings.Replace(items[3], "10003", "10103", 1)
	checkSame(t, rp, join(items), "a port change")
	reused := 0
	for _, text := range rp.last.texts {
		if _, ok := before[text]; ok {
			reused++
		}
	}
	if reused != 7 {
		t.Errorf("%d of 8 reservations reused, want 7", reused)
	}
	// A header change parses in full, and still agrees.
	checkSame(t, rp, []byte(strings.Replace(string(join(items)), "log: false", "log: true", 1)), "a settings change")
}

// FuzzReparse: any sequence of edits the fuzzer picks keeps the two in
// agreement.
func FuzzReparse(f *testing.F) {
	f.Add(uint64(1), []byte{0, 1, 2, 3, 4, 5})
	f.Add(uint64(7), []byte{6, 7, 8, 9, 10, 11, 12})
	f.Fuzz(func(t *testing.T, seed uint64, script []byte) {
		r := rand.New(rand.NewPCG(seed, 2))
		items := basePolicy(6)
		rp := NewReparser("p.yaml")
		checkSame(t, rp, join(items), "the first version")
		for _, b := range script {
			edited := append([]string(nil), items...)
			edited, what := edits[int(b)%len(edits)](r, edited)
			checkSame(t, rp, join(edited), what)
			if _, err := parseWhole("p.yaml", join(edited), false); err == nil {
				items = edited
			}
		}
	})
}

// TestParseInBatches: a policy of many batches, parsed concurrently,
// equals the one-document parse, positions included; so do its errors,
// wherever the bad reservation sits, and a drop-in.
func TestParseInBatches(t *testing.T) {
	items := basePolicy(3*batchItems + 17)
	data := join(items)
	l := headerLayout("p.yaml", false, data)
	if l == nil {
		t.Fatal("the plain layout was not recognised")
	}
	if _, _, ok := l.reparse("p.yaml", data, false); !ok {
		t.Fatal("the batched parse fell back to the whole parse")
	}
	checkSame(t, NewReparser("p.yaml"), data, "a big first version")
	for _, i := range []int{0, batchItems - 1, batchItems, len(items) - 1} {
		bad := append([]string(nil), items...)
		bad[i] = strings.Replace(bad[i], "ports: [", "ports: [70000, ", 1)
		checkSame(t, NewReparser("p.yaml"), join(bad), fmt.Sprintf("a bad port in reservation %d", i))
	}
	dup := append([]string(nil), items...)
	dup[len(dup)-1] = strings.Replace(dup[len(dup)-1], fmt.Sprintf("name: r%d", len(dup)-1), "name: r0", 1)
	checkSame(t, NewReparser("p.yaml"), join(dup), "a duplicate name in the last batch")

	dropIn := []byte("version: 1\nreservations:\n" + strings.Join(items, ""))
	want, wantErr := parseWhole("d.yaml", dropIn, true)
	got, err := ParseDropIn("d.yaml", dropIn)
	if wantErr != nil || err != nil || !reflect.DeepEqual(want, got) {
		t.Fatalf("drop-in: batched %v, whole %v; equal %v", err, wantErr, reflect.DeepEqual(want, got))
	}
	if got.Reservations[len(items)-1].Pos.Line <= got.Reservations[0].Pos.Line {
		t.Fatal("positions were not carried across batches")
	}
}
