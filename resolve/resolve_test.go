package resolve

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/policy"
)

// prefixEqual lets cmp compare netip values, whose fields are unexported.
var prefixEqual = cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })

var testResolver = Static{
	Users:  map[string]uint32{"www-data": 33, "_sipd": 999, "alice": 1000, "bob": 1001},
	Groups: map[string]uint32{"voip": 300, "web": 33},
}

// res wraps lines of one reservation (indented by four spaces) into a
// policy whose reservation starts at line 3, column 5.
func res(lines ...string) string {
	return "version: 1\nreservations:\n  - " + strings.Join(lines, "\n    ") + "\n"
}

const fullPolicy = `version: 1
settings:
  table: pf_test
  allow_root: false
  unprivileged_port_start: 80
  log: { rate: 5/second }
  marks: { owned: 0x10, squatted: 0x20 }
reservations:
  - name: web
    description: nginx
    ports: [443, 80, "81", "8000-8080", 8081]
    protocols: [tcp]
    owner:
      users: [www-data, 33]
    addresses: [192.0.2.10, "2001:db8::/64", "::ffff:198.51.100.0/120", 192.0.2.0/24]
  - name: sip
    ports: [5060, "5070-5079"]
    owner:
      users: [_sipd, 1001, "1200-1299", "1300"]
      groups: [voip, 200]
`

func TestParseResolveFull(t *testing.T) {
	p, err := policy.Parse("policy.yaml", []byte(fullPolicy))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(p.Reservations) != 2 || p.Reservations[0].Name != "web" || p.Reservations[1].Name != "sip" {
		t.Fatalf("Parse: reservations %+v, want web and sip in file order", p.Reservations)
	}
	got, err := Resolve(p, testResolver)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	want := &model.Resolved{
		Settings: model.Settings{
			Table:        "pf_test",
			AllowRoot:    false,
			PortStart:    model.PortStart{Mode: model.PortStartFixed, Value: 80},
			Log:          model.LogRate{Count: 5, Unit: model.PerSecond},
			MarkOwned:    0x10,
			MarkSquatted: 0x20,
			BindGuard:    model.BindGuardAuto,
		},
		Reservations: []model.Reservation{
			{
				Name:      "sip",
				Protocols: []model.Protocol{model.TCP, model.UDP},
				Ports:     []model.PortRange{{Lo: 5060, Hi: 5060}, {Lo: 5070, Hi: 5079}},
				Owners: model.Owners{
					UIDs: []model.IDRange{{Lo: 999, Hi: 999}, {Lo: 1001, Hi: 1001}, {Lo: 1200, Hi: 1299}, {Lo: 1300, Hi: 1300}},
					GIDs: []model.IDRange{{Lo: 200, Hi: 200}, {Lo: 300, Hi: 300}},
				},
				Pos: model.Pos{File: "policy.yaml", Line: 16, Col: 5},
			},
			{
				Name:        "web",
				Description: "nginx",
				Protocols:   []model.Protocol{model.TCP},
				Ports:       []model.PortRange{{Lo: 80, Hi: 80}, {Lo: 81, Hi: 81}, {Lo: 443, Hi: 443}, {Lo: 8000, Hi: 8080}, {Lo: 8081, Hi: 8081}},
				Owners:      model.Owners{UIDs: []model.IDRange{{Lo: 33, Hi: 33}}},
				Addresses: []netip.Prefix{
					netip.MustParsePrefix("192.0.2.0/24"),
					netip.MustParsePrefix("198.51.100.0/24"),
					netip.MustParsePrefix("2001:db8::/64"),
				},
				Pos: model.Pos{File: "policy.yaml", Line: 9, Col: 5},
			},
		},
	}
	if diff := cmp.Diff(want, got, prefixEqual); diff != "" {
		t.Errorf("Resolve mismatch (-want +got):\n%s", diff)
	}
}

func mustResolve(t *testing.T, yaml string) *model.Resolved {
	t.Helper()
	p, err := policy.Parse("p.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	r, err := Resolve(p, testResolver)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	return r
}

func TestNormalise(t *testing.T) {
	pfx := netip.MustParsePrefix
	tests := []struct {
		name string
		yaml string
		want model.Reservation
	}{
		{
			name: "overlapping ports merge, touching ones stay exact",
			yaml: res("name: a", `ports: [81, 80, "82-90", "85-86", 100, "92-95", 91, 65535, "65534-65535"]`, "owner: {users: [1]}"),
			want: model.Reservation{Ports: []model.PortRange{{Lo: 80, Hi: 80}, {Lo: 81, Hi: 81}, {Lo: 82, Hi: 90}, {Lo: 91, Hi: 91}, {Lo: 92, Hi: 95}, {Lo: 100, Hi: 100}, {Lo: 65534, Hi: 65535}}},
		},
		{
			name: "spaces in a range",
			yaml: res("name: a", `ports: ["8000 - 8080"]`, "owner: {users: [1]}"),
			want: model.Reservation{Ports: []model.PortRange{{Lo: 8000, Hi: 8080}}},
		},
		{
			name: "uids and names: duplicates merge, single ids stay exact",
			yaml: res("name: a", "ports: [1]", `owner: {users: [bob, 1000, alice, "0", "4294967294", "1002-1010", 999]}`),
			want: model.Reservation{Owners: model.Owners{Root: true, UIDs: []model.IDRange{{Lo: 0, Hi: 0}, {Lo: 999, Hi: 999}, {Lo: 1000, Hi: 1000}, {Lo: 1001, Hi: 1001}, {Lo: 1002, Hi: 1010}, {Lo: 4294967294, Hi: 4294967294}}}},
		},
		{
			name: "gids only",
			yaml: res("name: a", "ports: [1]", `owner: {groups: [voip, web, "30-32"]}`),
			want: model.Reservation{Owners: model.Owners{Root: true, GIDs: []model.IDRange{{Lo: 30, Hi: 32}, {Lo: 33, Hi: 33}, {Lo: 300, Hi: 300}}}},
		},
		{
			name: "protocols sorted and deduplicated",
			yaml: res("name: a", "ports: [1]", "protocols: [udp, tcp, udp]", "owner: {users: [1]}"),
			want: model.Reservation{Protocols: []model.Protocol{model.TCP, model.UDP}},
		},
		{
			name: "one protocol",
			yaml: res("name: a", "ports: [1]", "protocols: [udp]", "owner: {users: [1]}"),
			want: model.Reservation{Protocols: []model.Protocol{model.UDP}},
		},
		{
			name: "addresses: contained dropped, IPv4 first, mapped unmapped",
			yaml: res("name: a", "ports: [1]", "owner: {users: [1]}",
				`addresses: ["2001:db8::1", "2001:db8::/32", 10.1.0.0/16, 10.0.0.0/8, "::ffff:192.0.2.1", 192.0.2.1, "::1", 127.0.0.1/32, "::ffff:0.0.0.0/96"]`),
			want: model.Reservation{Addresses: []netip.Prefix{pfx("0.0.0.0/0"), pfx("::1/128"), pfx("2001:db8::/32")}},
		},
		{
			name: "addresses kept apart when disjoint",
			yaml: res("name: a", "ports: [1]", "owner: {users: [1]}",
				`addresses: [198.51.100.128/25, 198.51.100.0/25, "2001:db8::/64", 192.0.2.10]`),
			want: model.Reservation{Addresses: []netip.Prefix{pfx("192.0.2.10/32"), pfx("198.51.100.0/25"), pfx("198.51.100.128/25"), pfx("2001:db8::/64")}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustResolve(t, tt.yaml)
			if len(r.Reservations) != 1 {
				t.Fatalf("got %d reservations, want 1", len(r.Reservations))
			}
			got := r.Reservations[0]
			// Fill in what the case does not test with what it got.
			want := tt.want
			want.Name, want.Pos = got.Name, got.Pos
			if want.Protocols == nil {
				want.Protocols = []model.Protocol{model.TCP, model.UDP}
			}
			if want.Ports == nil {
				want.Ports = got.Ports
			}
			if want.Owners.UIDs == nil && want.Owners.GIDs == nil {
				want.Owners = model.Owners{Root: true, UIDs: []model.IDRange{{Lo: 1, Hi: 1}}}
			}
			if diff := cmp.Diff(want, got, prefixEqual); diff != "" {
				t.Errorf("mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSortedByName(t *testing.T) {
	r := mustResolve(t, `version: 1
reservations:
  - {name: zeta, ports: [3], owner: {users: [1]}}
  - {name: Alpha, ports: [2], owner: {users: [1]}}
  - {name: alpha, ports: [1], owner: {users: [1]}}
`)
	var names []string
	for _, res := range r.Reservations {
		names = append(names, res.Name)
	}
	if diff := cmp.Diff([]string{"Alpha", "alpha", "zeta"}, names); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	if got, want := r.Reservations[2].Pos, (model.Pos{File: "p.yaml", Line: 3, Col: 5}); got != want {
		t.Errorf("zeta's Pos = %v, want %v (the flow mapping)", got, want)
	}
}

func TestResolveErrors(t *testing.T) {
	two := func(a, b string) string {
		return "version: 1\nreservations:\n  - name: a\n    " + a + "\n  - name: b\n    " + b + "\n"
	}
	tests := []struct {
		name, yaml string
		want       []string // nil: no error
	}{
		{"unknown user", res("name: a", "ports: [1]", "owner: {users: [alice, mallory], groups: [voip]}"),
			[]string{`p.yaml:5:28: reservations[0].owner.users[1]: unknown user "mallory"`}},
		{"unknown group", res("name: a", "ports: [1]", "owner:", "  groups: [nogroup]"),
			[]string{`p.yaml:6:16: reservations[0].owner.groups[0]: unknown group "nogroup"`}},
		{"unknown twice", two("ports: [1]\n    owner: {users: [eve]}", "ports: [2]\n    owner: {users: [eve]}"),
			[]string{
				`p.yaml:5:21: reservations[0].owner.users[0]: unknown user "eve"`,
				`p.yaml:8:21: reservations[1].owner.users[0]: unknown user "eve"`,
			}},
		{"overlap different owners",
			two(`ports: ["80-90"]`+"\n    owner: {users: [alice]}", `ports: [85, "88-100"]`+"\n    owner: {users: [bob]}"),
			[]string{`p.yaml:6:5: reservations[1].ports: reservation "b" overlaps reservation "a" (p.yaml:3:5) on tcp/85,88-90 and udp/85,88-90 with different owners`}},
		{"overlap same owners",
			two("ports: [80]\n    protocols: [tcp]\n    owner: {users: [alice, 33]}", "ports: [80]\n    owner: {users: [www-data, 1000]}"),
			[]string{`p.yaml:7:5: reservations[1].ports: reservation "b" overlaps reservation "a" (p.yaml:3:5) on tcp/80; merge them into one reservation`}},
		{"overlap ids differ only by group",
			two("ports: [80]\n    owner: {users: [alice]}", "ports: [80]\n    owner: {users: [alice], groups: [web]}"),
			[]string{`p.yaml:6:5: reservations[1].ports: reservation "b" overlaps reservation "a" (p.yaml:3:5) on tcp/80 and udp/80 with different owners`}},
		{"no overlap across protocols",
			two("ports: [80]\n    protocols: [tcp]\n    owner: {users: [alice]}", "ports: [80]\n    protocols: [udp]\n    owner: {users: [bob]}"),
			nil},
		{"no overlap on disjoint addresses",
			two("ports: [80]\n    owner: {users: [alice]}\n    addresses: [192.0.2.1, \"2001:db8::1\"]", "ports: [80]\n    owner: {users: [bob]}\n    addresses: [192.0.2.2]"),
			nil},
		{"overlap on intersecting prefixes",
			two("ports: [80]\n    owner: {users: [alice]}\n    addresses: [192.0.2.0/24, \"2001:db8::/64\"]", "ports: [80]\n    protocols: [udp]\n    owner: {users: [bob]}\n    addresses: [192.0.2.7, 198.51.100.1]"),
			[]string{`p.yaml:7:5: reservations[1].ports: reservation "b" overlaps reservation "a" (p.yaml:3:5) on udp/80 at 192.0.2.7 with different owners`}},
		{"overlap when one side has every address",
			two("ports: [80]\n    owner: {users: [alice]}", "ports: [80]\n    owner: {users: [bob]}\n    addresses: [192.0.2.7]"),
			[]string{`p.yaml:6:5: reservations[1].ports: reservation "b" overlaps reservation "a" (p.yaml:3:5) on tcp/80 and udp/80 with different owners`}},
		{"adjacent ranges do not overlap",
			two(`ports: ["80-90"]`+"\n    owner: {users: [alice]}", `ports: ["91-100", 79]`+"\n    owner: {users: [bob]}"),
			nil},
		{"once per pair, several pairs",
			`version: 1
reservations:
  - name: a
    ports: [80, 443, "1000-2000"]
    owner: {users: [alice]}
  - name: b
    ports: [443, 1500]
    owner: {users: [bob]}
  - name: c
    ports: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1999]
    protocols: [udp]
    owner: {users: [bob]}
  - name: d
    ports: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    protocols: [udp]
    owner: {users: [alice]}
    addresses: [192.0.2.1]
`,
			[]string{
				`p.yaml:6:5: reservations[1].ports: reservation "b" overlaps reservation "a" (p.yaml:3:5) on tcp/443,1500 and udp/443,1500 with different owners`,
				`p.yaml:9:5: reservations[2].ports: reservation "c" overlaps reservation "a" (p.yaml:3:5) on udp/1999 with different owners`,
				`p.yaml:13:5: reservations[3].ports: reservation "d" overlaps reservation "c" (p.yaml:9:5) on udp/1-10 with different owners`,
			}},
		{"many overlapping ranges are summarised",
			two("ports: [1, 3, 5, 7, 9, 11]\n    protocols: [tcp]\n    owner: {users: [alice]}", `ports: ["1-20"]`+"\n    owner: {users: [bob]}"),
			[]string{`p.yaml:7:5: reservations[1].ports: reservation "b" overlaps reservation "a" (p.yaml:3:5) on tcp/1,3,5,7,... (2 more) with different owners`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := policy.Parse("p.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			r, err := Resolve(p, testResolver)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Resolve: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Resolve succeeded with %+v, want errors", r)
			}
			var errs *policy.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Resolve error %T is not *policy.Errors: %v", err, err)
			}
			var got []string
			for _, e := range errs.List {
				got = append(got, e.Error())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("errors mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// failing is a Resolver whose directory is down.
type failing struct{}

func (failing) LookupUser(string) (uint32, error)  { return 0, errors.New("ldap: connection refused") }
func (failing) LookupGroup(string) (uint32, error) { return 0, errors.New("ldap: connection refused") }

func TestResolveLookupFailure(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(res("name: a", "ports: [1]", "owner: {users: [alice]}")))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Resolve(p, failing{})
	want := `p.yaml:5:21: reservations[0].owner.users[0]: ldap: connection refused`
	if err == nil || err.Error() != want {
		t.Errorf("Resolve error = %v, want %s", err, want)
	}
}

func TestStatic(t *testing.T) {
	var s Static // nil maps: everything is unknown
	if _, err := s.LookupUser("root"); !errors.Is(err, ErrUnknown) {
		t.Errorf("LookupUser error = %v, want ErrUnknown", err)
	}
	if _, err := s.LookupGroup("root"); !errors.Is(err, ErrUnknown) {
		t.Errorf("LookupGroup error = %v, want ErrUnknown", err)
	}
}

func TestSystem(t *testing.T) {
	// Every Linux system has root (uid 0) in /etc/passwd.
	sys := NewSystem("", "")
	if uid, err := sys.LookupUser("root"); err != nil || uid != 0 {
		t.Errorf("LookupUser(root) = %d, %v; want 0", uid, err)
	}
	if _, err := sys.LookupUser("portfw-no-such-user"); !errors.Is(err, ErrUnknown) {
		t.Errorf("LookupUser(portfw-no-such-user) error = %v, want ErrUnknown", err)
	}
	if _, err := sys.LookupGroup("portfw-no-such-group"); !errors.Is(err, ErrUnknown) {
		t.Errorf("LookupGroup(portfw-no-such-group) error = %v, want ErrUnknown", err)
	}
}

// TestSystemFiles: a container's resolver reads the host's files, mounted
// elsewhere, sees their changes, and never asks NSS (which would read the
// container's own).
func TestSystemFiles(t *testing.T) {
	dir := t.TempDir()
	passwd, group := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	write := func(path, text string) {
		t.Helper()
		tmp := path + ".new"
		if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil { // as useradd does
			t.Fatal(err)
		}
	}
	write(passwd, "# comment\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\nwww-data:x:99:99::/:/bin/false\n+nis\nbroken\n")
	write(group, "voip:x:300:\n")
	sys := NewSystem(passwd, group)
	if uid, err := sys.LookupUser("www-data"); err != nil || uid != 33 {
		t.Errorf("LookupUser(www-data) = %d, %v; want 33 (the first entry)", uid, err)
	}
	if _, err := sys.LookupUser("root"); !errors.Is(err, ErrUnknown) {
		t.Errorf("LookupUser(root) error = %v, want ErrUnknown: the files do not have it and NSS is not asked", err)
	}
	if gid, err := sys.LookupGroup("voip"); err != nil || gid != 300 {
		t.Errorf("LookupGroup(voip) = %d, %v; want 300", gid, err)
	}
	write(passwd, "alice:x:1000:1000::/home/alice:/bin/sh\n")
	if uid, err := sys.LookupUser("alice"); err != nil || uid != 1000 {
		t.Errorf("after the file changed, LookupUser(alice) = %d, %v; want 1000", uid, err)
	}
	if _, err := sys.LookupUser("www-data"); !errors.Is(err, ErrUnknown) {
		t.Errorf("after the file changed, LookupUser(www-data) error = %v, want ErrUnknown", err)
	}
	if !slicesEqual(sys.Files(), []string{passwd, group}) {
		t.Errorf("Files() = %v", sys.Files())
	}
}

func slicesEqual(a, b []string) bool { return strings.Join(a, "\x00") == strings.Join(b, "\x00") }

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := Load(filepath.Join(dir, "missing.yaml"), testResolver); err == nil ||
		!errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), "read policy: ") {
		t.Errorf("Load(missing) error = %v, want read policy: ... not exist", err)
	}

	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, []byte(fullPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	r, p, err := Load(path, testResolver)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(r.Reservations) != 2 || len(p.Reservations) != 2 || p.File != path || r.Reservations[0].Pos.File != path {
		t.Errorf("Load = %+v, %+v; want two reservations from %s", r, p, path)
	}

	// A policy that parses but does not resolve still comes back for `check`.
	if err := os.WriteFile(path, []byte(res("name: a", "ports: [1]", "owner: {users: [nobody-here]}")), 0o644); err != nil {
		t.Fatal(err)
	}
	r, p, err = Load(path, testResolver)
	if err == nil || r != nil || p == nil || !strings.HasPrefix(err.Error(), path+":5:21: ") {
		t.Errorf("Load = %v, %v, %v; want the Policy and an unknown user error", r, p, err)
	}

	if err := os.WriteFile(path, []byte("version: 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r, p, err = Load(path, testResolver); err == nil || r != nil || p != nil {
		t.Errorf("Load = %v, %v, %v; want only an error", r, p, err)
	}
}

func TestResolveIDOutOfRange(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(res("name: a", "ports: [1]", "owner: {users: [nobody]}")))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Resolve(p, Static{Users: map[string]uint32{"nobody": 4294967295}})
	want := `p.yaml:5:21: reservations[0].owner.users[0]: user "nobody" has id 4294967295, out of range 0..4294967294`
	if err == nil || err.Error() != want {
		t.Errorf("Resolve error = %v, want %s", err, want)
	}
}

func TestSubIDWarnings(t *testing.T) {
	subs := parseSubIDs([]byte("alice:100000:65536\n# comment\nbad line\nbob:165536:65536\nzero:1:0\n"))
	if len(subs) != 2 || subs[1].User != "bob" || subs[1].Range != (model.IDRange{Lo: 165536, Hi: 231071}) {
		t.Fatalf("parsed %+v", subs)
	}
	r := &model.Resolved{Reservations: []model.Reservation{
		{Name: "ctr", Pos: model.Pos{File: "p.yaml", Line: 4, Col: 5}, Owners: model.Owners{UIDs: []model.IDRange{{Lo: 200000, Hi: 200100}}}},
		{Name: "web", Owners: model.Owners{UIDs: []model.IDRange{model.ID(33)}, GIDs: []model.IDRange{model.ID(170000)}}},
	}}
	w := SubIDWarnings(r, fakeSubIDs{uids: subs})
	if len(w) != 1 || !strings.Contains(w[0], `reservation "ctr" at p.yaml:4:5: owner uids 200000-200100 overlap the subordinate uids 165536-231071 of user bob`) {
		t.Errorf("warnings %q", w)
	}
	if w := SubIDWarnings(r, fakeSubIDs{gids: subs}); len(w) != 1 || !strings.Contains(w[0], "owner gids 170000") {
		t.Errorf("gid warnings %q", w)
	}
}

type fakeSubIDs struct{ uids, gids []SubRange }

func (f fakeSubIDs) SubUIDs() ([]SubRange, error) { return f.uids, nil }
func (f fakeSubIDs) SubGIDs() ([]SubRange, error) { return f.gids, nil }
