package resolve

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/portfw/portfw/policy"
)

// dropInHost is a policy directory with a main file, a policy.d and a user
// database.
type dropInHost struct {
	t                  *testing.T
	dir, main, dropIns string
	users              Static
}

func newDropInHost(t *testing.T) *dropInHost {
	dir := t.TempDir()
	h := &dropInHost{t: t, dir: dir, main: filepath.Join(dir, "policy.yaml"), dropIns: filepath.Join(dir, "policy.d"),
		users: Static{Users: map[string]uint32{"alice": 1000, "www-data": 33, "_sipd": 120}, Groups: map[string]uint32{"voip": 2000}}}
	if err := os.Mkdir(h.dropIns, 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *dropInHost) write(name, text string) string {
	h.t.Helper()
	path := filepath.Join(h.dir, name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return path
}

func (h *dropInHost) load() (*policy.Policy, []string, error) {
	h.t.Helper()
	res, pol, err := Load(h.main, h.users)
	if err != nil {
		var es *policy.Errors
		if !errors.As(err, &es) {
			return pol, nil, err
		}
		var lines []string
		for _, e := range es.List {
			lines = append(lines, e.Error())
		}
		return pol, lines, nil
	}
	var names []string
	for _, r := range res.Reservations {
		names = append(names, fmt.Sprintf("%s@%s", r.Name, filepath.Base(r.Pos.File)))
	}
	return pol, names, nil
}

func TestDropInsMerge(t *testing.T) {
	h := newDropInHost(t)
	h.write("policy.yaml", "version: 1\nsettings: { table: web }\nreservations:\n  - name: ssh-alt\n    ports: [2222]\n    owner: { users: [alice] }\n")
	h.write("policy.d/50-nginx.yaml", "version: 1\nreservations:\n  - name: nginx\n    ports: [80, 443]\n    protocols: [tcp]\n    owner: { users: [www-data] }\n")
	h.write("policy.d/20-sip.yaml", "version: 1\nreservations:\n  - name: sip\n    ports: [5060]\n    owner: { users: [_sipd] }\n")
	// Not drop-ins: other suffixes, hidden files, editors' and Ansible's.
	h.write("policy.d/50-nginx.yaml~", "garbage: [")
	h.write("policy.d/.50-nginx.yaml.swp", "garbage: [")
	h.write("policy.d/.ansible_tmp123.yaml", "garbage: [")
	h.write("policy.d/README", "garbage: [")
	pol, got, err := h.load()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"nginx@50-nginx.yaml", "sip@20-sip.yaml", "ssh-alt@policy.yaml"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("merged reservations %v, want %v", got, want)
	}
	if pol.Settings.Table != "web" {
		t.Errorf("settings come from the main file: table %q, want web", pol.Settings.Table)
	}
	wantFiles := []string{h.main, filepath.Join(h.dropIns, "20-sip.yaml"), filepath.Join(h.dropIns, "50-nginx.yaml")}
	if !reflect.DeepEqual(pol.Files(), wantFiles) {
		t.Errorf("files %v, want %v (sorted by name, main first)", pol.Files(), wantFiles)
	}
}

func TestDropInErrors(t *testing.T) {
	const main = "version: 1\nreservations:\n  - name: web\n    ports: [80]\n    owner: { users: [www-data] }\n"
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string // substrings of the problems, in order
	}{{
		name:  "settings in a drop-in",
		files: map[string]string{"policy.d/10-x.yaml": "version: 1\nsettings:\n  table: evil\nreservations: []\n"},
		want:  []string{"policy.d/10-x.yaml:2:1: settings: a drop-in holds only version and reservations"},
	}, {
		name: "a duplicate name across files names both",
		files: map[string]string{"policy.d/10-x.yaml": "version: 1\nreservations:\n  - name: sip\n    ports: [5060]\n    owner: { users: [_sipd] }\n" +
			"  - name: web\n    ports: [8080]\n    owner: { users: [alice] }\n"},
		want: []string{`policy.d/10-x.yaml:6:11: reservations[1].name: duplicate reservation name "web" (first at ` + "DIR/policy.yaml:3:11, reservations[0])"},
	}, {
		name:  "an overlap across files names both",
		files: map[string]string{"policy.d/10-x.yaml": "version: 1\nreservations:\n  - name: other\n    ports: [\"70-90\"]\n    owner: { users: [alice] }\n"},
		want:  []string{`policy.d/10-x.yaml:3:5: reservations[0].ports: reservation "other" overlaps reservation "web" (DIR/policy.yaml:3:5) on tcp/80 and udp/80 with different owners`},
	}, {
		name: "problems in two drop-ins are all reported, each at its own place",
		files: map[string]string{
			"policy.d/10-a.yaml": "version: 1\nreservations:\n  - name: a\n    ports: [99999]\n    owner: { users: [alice] }\n",
			"policy.d/20-b.yaml": "version: 2\nreservations:\n  - name: b\n    ports: [81]\n    owner: { users: [nobody-here] }\n",
		},
		want: []string{"policy.d/10-a.yaml:4:13: reservations[0].ports[0]", "policy.d/20-b.yaml:1:10: version: unsupported version 2"},
	}, {
		name:  "an unknown user in a drop-in is reported there",
		files: map[string]string{"policy.d/10-a.yaml": "version: 1\nreservations:\n  - name: a\n    ports: [81]\n    owner: { users: [nobody-here] }\n"},
		want:  []string{`policy.d/10-a.yaml:5:22: reservations[0].owner.users[0]: unknown user "nobody-here"`},
	}, {
		name:  "a drop-in without version",
		files: map[string]string{"policy.d/10-a.yaml": "reservations: []\n"},
		want:  []string{`policy.d/10-a.yaml:1:1: version: missing`},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newDropInHost(t)
			h.write("policy.yaml", main)
			for name, text := range tc.files {
				h.write(name, text)
			}
			_, got, err := h.load()
			if err != nil {
				t.Fatal(err)
			}
			joined := strings.Join(got, "\n")
			if len(got) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%s", len(got), len(tc.want), joined)
			}
			for i, w := range tc.want {
				w = strings.ReplaceAll(w, "DIR", h.dir)
				if !strings.Contains(got[i], w) {
					t.Errorf("problem %d:\n got %s\nwant it to contain %s", i, got[i], w)
				}
			}
		})
	}
}

// TestDropInDirectory: a policy.d that cannot be read, or an entry that is
// no file, is an error, not a silently smaller policy.
func TestDropInDirectory(t *testing.T) {
	h := newDropInHost(t)
	h.write("policy.yaml", "version: 1\nreservations: []\n")
	if err := os.Mkdir(filepath.Join(h.dropIns, "50-dir.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.load(); err == nil || !strings.Contains(err.Error(), "50-dir.yaml") {
		t.Errorf("a directory named like a drop-in: %v, want an error naming it", err)
	}
	if err := os.Remove(filepath.Join(h.dropIns, "50-dir.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(h.dropIns); err != nil {
		t.Fatal(err)
	}
	h.write("policy.d", "not a directory")
	if _, _, err := h.load(); err == nil || !strings.Contains(err.Error(), "policy.d") {
		t.Errorf("policy.d a file: %v, want an error naming it", err)
	}
}

// A drop-in named *.yml would be skipped and its ports left free: it is an
// error naming the fix. Editor backups and dpkg's leftovers are skipped.
func TestDropInYml(t *testing.T) {
	h := newDropInHost(t)
	h.write("policy.yaml", "version: 1\nreservations: []\n")
	h.write("policy.d/50-web.yaml.dpkg-old", "not yaml: [")
	h.write("policy.d/README", "notes")
	if _, _, err := h.load(); err != nil {
		t.Fatalf("backups and notes in policy.d: %v", err)
	}
	h.write("policy.d/50-nginx.yml", "version: 1\nreservations: []\n")
	if _, _, err := h.load(); err == nil || !strings.Contains(err.Error(), "50-nginx.yml: drop-ins are read only when their name ends in .yaml: rename it to 50-nginx.yaml") {
		t.Errorf("a .yml drop-in: %v, want an error saying to rename it", err)
	}
}

// TestLoaderDropIns: the Loader, across drop-ins added, edited, renamed
// and removed, gives what Load gives, and reuses the files not touched.
func TestLoaderDropIns(t *testing.T) {
	h := newDropInHost(t)
	h.write("policy.yaml", "version: 1\nreservations:\n  - name: web\n    ports: [80]\n    owner: { users: [www-data] }\n")
	l := NewLoader(h.users)
	check := func(what string) {
		t.Helper()
		files, err := Files(h.main)
		if err != nil {
			t.Fatal(err)
		}
		got, gotPol, gotErr := l.Load(files)
		want, wantPol, wantErr := Load(h.main, h.users)
		if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) || !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotPol, wantPol) {
			t.Fatalf("after %s: the Loader differs from Load\n got %+v %v\nwant %+v %v", what, got, gotErr, want, wantErr)
		}
	}
	check("no drop-ins")
	sip := h.write("policy.d/20-sip.yaml", "version: 1\nreservations:\n  - name: sip\n    ports: [5060]\n    owner: { users: [_sipd] }\n")
	check("a drop-in added")
	before := l.reused
	h.write("policy.d/30-x.yaml", "version: 1\nreservations:\n  - name: x\n    ports: [7000]\n    owner: { users: [alice] }\n")
	check("another drop-in added")
	if l.reused-before != 2 {
		t.Errorf("adding a drop-in reused %d reservations, want the 2 of the other files", l.reused-before)
	}
	h.write("policy.d/30-x.yaml", "version: 1\nreservations:\n  - name: x\n    ports: [5060]\n    owner: { users: [alice] }\n")
	check("a drop-in overlapping another")
	h.write("policy.d/30-x.yaml", "version: 1\nreservations:\n  - name: x\n    ports: [7001]\n    owner: { users: [alice] }\n")
	check("the overlap fixed")
	if err := os.Rename(sip, filepath.Join(h.dropIns, "60-sip.yaml")); err != nil {
		t.Fatal(err)
	}
	check("a drop-in renamed")
	if err := os.Remove(filepath.Join(h.dropIns, "60-sip.yaml")); err != nil {
		t.Fatal(err)
	}
	check("a drop-in removed")
}
