package resolve

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/policy"
	"github.com/portfw/portfw/testenv"
)

func resolveText(t *testing.T, text string, cg Cgroups) (*model.Resolved, error) {
	t.Helper()
	p, err := policy.Parse("p.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return Resolve(p, Static{Cgroups: cg})
}

// TestResolveCgroups: units and paths become cgroups with their level and
// id; what does not exist waits; a host without a hierarchy is an error
// at the entry.
func TestResolveCgroups(t *testing.T) {
	cg := StaticCgroups{
		IDs:   map[string]uint64{"/system.slice/web.service": 41, "/a.slice/b.slice/c": 42},
		Units: map[string][]UnitCgroup{"web.service": {{"web.service", "/system.slice/web.service"}}},
	}
	r, err := resolveText(t, `version: 1
reservations:
  - name: x
    ports: [80]
    owner: { units: [web.service, later.service, "app@*.service"], cgroups: [/a.slice/b.slice/c, /gone.slice/x] }
`, cg)
	if err != nil {
		t.Fatal(err)
	}
	got := r.Reservations[0].Owners.Cgroups
	want := []model.Cgroup{
		{Source: "app@*.service", Unit: true},
		{Source: "later.service", Unit: true},
		{Source: "/gone.slice/x", Path: "/gone.slice/x", Level: 2},
		{Source: "web.service", Unit: true, Path: "/system.slice/web.service", Level: 2, ID: 41},
		{Source: "/a.slice/b.slice/c", Path: "/a.slice/b.slice/c", Level: 3, ID: 42},
	}
	if len(got) != len(want) {
		t.Fatalf("cgroups %+v\nwant %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("cgroup %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if w := strings.Join(r.Reservations[0].Owners.Waiting(), " "); w != "app@*.service later.service /gone.slice/x" {
		t.Errorf("waiting %q", w)
	}
	if len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "x: waiting for app@*.service, later.service, /gone.slice/x") {
		t.Errorf("warnings %q", r.Warnings)
	}
	if _, err := resolveText(t, "version: 1\nreservations:\n  - name: x\n    ports: [80]\n    owner: { units: [a.service] }\n", nil); err == nil ||
		!strings.Contains(err.Error(), "p.yaml:5:22: reservations[0].owner: owners that are units or cgroups need the cgroup v2 hierarchy") {
		t.Errorf("no hierarchy: %v", err)
	}
}

// TestLoaderUnitRestart: the daemon's Loader resolves unit owners at every
// load (the file is the same, the cgroups are not), and a unit that stops
// keeps its level, so its restart compiles to an element delta (the same
// sets and rules), not a new ruleset.
func TestLoaderUnitRestart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	testenv.ReplaceFile(t, path, `version: 1
reservations:
  - name: web
    ports: [80]
    owner: { units: [web.service] }
  - name: app
    ports: [8000]
    owner: { units: ["app@*.service"] }
  - name: other
    ports: [9000]
    owner: { users: [1000] }
`)
	cg := StaticCgroups{IDs: map[string]uint64{}, Units: map[string][]UnitCgroup{}}
	run := func(id uint64) {
		if id == 0 {
			delete(cg.IDs, "/system.slice/web.service")
			delete(cg.IDs, "/system.slice/app@1.service")
			delete(cg.Units, "web.service")
			delete(cg.Units, "app@*.service")
			return
		}
		cg.IDs["/system.slice/web.service"] = id
		cg.IDs["/system.slice/app@1.service"] = id + 1
		cg.Units["web.service"] = []UnitCgroup{{"web.service", "/system.slice/web.service"}}
		cg.Units["app@*.service"] = []UnitCgroup{{"app@1.service", "/system.slice/app@1.service"}}
	}
	l := NewLoader(Static{Cgroups: cg})
	load := func() *model.Resolved {
		t.Helper()
		r, _, err := l.Load([]string{path})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	run(100)
	prev := load()
	for i, id := range []uint64{0, 200, 0, 300} {
		run(id)
		next := load()
		c, _, ok := compiler.Change(prev, next)
		if !ok {
			t.Fatalf("step %d (id %d): not an element delta", i, id)
		}
		if strings.Join(c.Changed, " ") != "app web" {
			t.Errorf("step %d: changed %v, want app and web", i, c.Changed)
		}
		live := next.Reservations[2].Owners.Live() // web (sorted: app, other, web)
		if (id == 0) != (len(live) == 0) || (id != 0 && live[0].ID != id) {
			t.Errorf("step %d: web's live cgroups %+v", i, live)
		}
		prev = next
	}
}
