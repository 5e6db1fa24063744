package bindguard

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/model"
)

func idr(rs ...uint32) []model.IDRange {
	var out []model.IDRange
	for i := 0; i+1 < len(rs); i += 2 {
		out = append(out, model.IDRange{Lo: rs[i], Hi: rs[i+1]})
	}
	return out
}

func TestFromResolved(t *testing.T) {
	tcp := []model.Protocol{model.TCP}
	both := []model.Protocol{model.TCP, model.UDP}
	r := &model.Resolved{
		Settings: model.Settings{AllowRoot: true},
		Reservations: []model.Reservation{
			{Name: "a-range", Protocols: []model.Protocol{model.UDP}, Ports: []model.PortRange{{Lo: 5070, Hi: 5072}},
				Owners: model.Owners{Root: true, UIDs: idr(1200, 1299), GIDs: idr(300, 300)}},
			{Name: "internal", Protocols: tcp, Ports: []model.PortRange{{Lo: 80, Hi: 80}}, Owners: model.Owners{Root: true, UIDs: idr(1000, 1000)},
				Addresses: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
			{Name: "public", Protocols: tcp, Ports: []model.PortRange{{Lo: 80, Hi: 80}}, Owners: model.Owners{Root: true, UIDs: idr(33, 33, 1000, 1000)},
				Addresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("2001:db8::/64")}},
			{Name: "web", Protocols: both, Ports: []model.PortRange{{Lo: 443, Hi: 443}}, Owners: model.Owners{Root: true, UIDs: idr(33, 33)}},
		},
		// Root-only: 80 is scoped above, so the guard owns its other addresses.
		Guard: []model.Reservation{{Name: model.GuardName, Protocols: tcp,
			Ports: []model.PortRange{{Lo: 79, Hi: 80}}, Owners: model.Owners{Root: true}}},
	}
	want := `owners 1: uid 0 gid -
owners 2: uid 0,33 gid -
owners 3: uid 0,33,1000 gid -
owners 4: uid 0,1000 gid -
owners 5: uid 0,1200-1299 gid 300
tcp/79 default 1 wild4 1 wild6 1
tcp/80 default 1 wild4 1 wild6 1 scoped
tcp/443 default 2 wild4 2 wild6 2
udp/443 default 2 wild4 2 wild6 2
udp/5070 default 5 wild4 5 wild6 5
udp/5071 default 5 wild4 5 wild6 5
udp/5072 default 5 wild4 5 wild6 5
tcp/80 192.0.2.10/32 owners 3
tcp/80 198.51.100.0/24 owners 4
tcp/80 2001:db8::/64 owners 3
`
	got := FromResolved(r)
	if diff := cmp.Diff(want, got.String()); diff != "" {
		t.Errorf("FromResolved mismatch (-want +got):\n%s", diff)
	}
	if again := FromResolved(r); again.String() != got.String() {
		t.Errorf("FromResolved is not deterministic")
	}
}

// Without a default owner, a wildcard bind needs every scope's owner, and
// an IPv4 wildcard only the IPv4 scopes'.
func TestFromResolvedWildcards(t *testing.T) {
	tcp := []model.Protocol{model.TCP}
	r := &model.Resolved{
		Reservations: []model.Reservation{
			{Name: "v4", Protocols: tcp, Ports: []model.PortRange{{Lo: 8080, Hi: 8080}}, Owners: model.Owners{UIDs: idr(10, 20)},
				Addresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32")}},
			{Name: "v6", Protocols: tcp, Ports: []model.PortRange{{Lo: 8080, Hi: 8080}}, Owners: model.Owners{UIDs: idr(15, 30)},
				Addresses: []netip.Prefix{netip.MustParsePrefix("2001:db8::1/128")}},
			{Name: "v6only", Protocols: tcp, Ports: []model.PortRange{{Lo: 9090, Hi: 9090}}, Owners: model.Owners{UIDs: idr(40, 40)},
				Addresses: []netip.Prefix{netip.MustParsePrefix("2001:db8::1/128")}},
		},
	}
	want := `owners 1: uid 10-20 gid -
owners 2: uid 15-20 gid -
owners 3: uid 15-30 gid -
owners 4: uid 40 gid -
tcp/8080 default - wild4 1 wild6 2 scoped
tcp/9090 default - wild4 - wild6 4 scoped
tcp/8080 192.0.2.10/32 owners 1
tcp/8080 2001:db8::1/128 owners 3
tcp/9090 2001:db8::1/128 owners 4
`
	if diff := cmp.Diff(want, FromResolved(r).String()); diff != "" {
		t.Errorf("FromResolved mismatch (-want +got):\n%s", diff)
	}
}

func TestFromResolvedEmpty(t *testing.T) {
	s := FromResolved(&model.Resolved{Settings: model.Settings{AllowRoot: true}})
	if s.String() != "" || len(s.Ports) != 0 {
		t.Errorf("empty policy: %q", s.String())
	}
}

func TestIDPrefixes(t *testing.T) {
	check := func(lo, hi uint32) {
		t.Helper()
		ps := idPrefixes(lo, hi)
		if len(ps) > 62 {
			t.Errorf("[%d, %d]: %d prefixes", lo, hi, len(ps))
		}
		next := uint64(lo)
		for _, p := range ps {
			size := uint64(1) << (32 - p.bits)
			if uint64(p.id) != next || uint64(p.id)%size != 0 {
				t.Fatalf("[%d, %d]: prefix %d/%d is not aligned at %d", lo, hi, p.id, p.bits, next)
			}
			next += size
		}
		if next != uint64(hi)+1 {
			t.Errorf("[%d, %d]: prefixes end at %d", lo, hi, next-1)
		}
	}
	check(0, 4294967295)
	check(0, model.MaxID)
	check(1, model.MaxID)
	check(100000, 165535)
	check(7, 7)
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		a, b := rnd.Uint32(), rnd.Uint32()
		check(min(a, b), max(a, b))
	}
}

func TestEncode(t *testing.T) {
	r := &model.Resolved{
		Reservations: []model.Reservation{
			{Name: "a", Protocols: []model.Protocol{model.TCP}, Ports: []model.PortRange{{Lo: 80, Hi: 80}},
				Owners:    model.Owners{Root: true, UIDs: idr(33, 33, 1000, 1003), GIDs: idr(7, 7)},
				Addresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}},
			{Name: "b", Protocols: []model.Protocol{model.UDPLite}, Ports: []model.PortRange{{Lo: 5060, Hi: 5060}},
				Owners: model.Owners{UIDs: idr(33, 33)}},
		},
	}
	e := encode(FromResolved(r))
	if len(e.ports) != 2 || len(e.scopes) != 1 || len(e.owners) != 4 || len(e.ranges) != 1 {
		t.Fatalf("entries: %d ports, %d scopes, %d owners, %d ranges; want 2, 1, 4 (uids 0, 33, gid 7; uid 33), 1 (1000/30)",
			len(e.ports), len(e.scopes), len(e.owners), len(e.ranges))
	}
	if k := e.ports[0].k; string(k) != "\x06\x00\x00\x50" {
		t.Errorf("ports key = %x, want proto 6, 0, port 80 big-endian", k)
	}
	if k := e.ports[1].k; string(k) != "\x88\x00\x13\xc4" {
		t.Errorf("ports key = %x, want proto 136 (UDP-Lite), 0, port 5060 big-endian", k)
	}
	sc := e.scopes[0].k
	if len(sc) != scopesKeySize || sc[4] != 6 || sc[5] != 0 || sc[6] != 0 || sc[7] != 80 ||
		string(sc[8:]) != "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xc0\x00\x02\x00" {
		t.Errorf("scopes key = %x", sc)
	}
	if got := sc[0]; got != 32+96+24 {
		t.Errorf("scopes prefix length = %d, want %d", got, 32+96+24)
	}
	for _, x := range e.owners {
		if len(x.k) != ownersKeySize {
			t.Errorf("owners key %x: %d bytes, want %d", x.k, len(x.k), ownersKeySize)
		}
	}
}

func TestSpecSkipsProtocolsWithoutBindHook(t *testing.T) {
	for _, p := range model.Protocols() {
		r := &model.Resolved{Reservations: []model.Reservation{{Name: "a", Protocols: []model.Protocol{p.Protocol},
			Ports: []model.PortRange{{Lo: 80, Hi: 80}}, Owners: model.Owners{UIDs: idr(1, 1)}}}}
		if got := len(FromResolved(r).Ports); got != map[bool]int{true: 1, false: 0}[p.BindHook] {
			t.Errorf("%s: %d guarded ports, want one exactly when the bind hook sees it", p.Name, got)
		}
	}
}

func TestDecide(t *testing.T) {
	unsupported := func() error { return errors.New("bind guard not supported: no cgroup v2") }
	supported := func() error { return nil }
	tests := []struct {
		mode    model.BindGuardMode
		check   func() error
		on      bool
		note    string // substring
		wantErr string // substring
	}{
		{model.BindGuardOff, unsupported, false, "", ""},
		{model.BindGuardOn, supported, true, "", ""},
		{model.BindGuardOn, unsupported, false, "", "bind_guard is on but bind guard not supported: no cgroup v2"},
		{model.BindGuardAuto, supported, true, "", ""},
		{model.BindGuardAuto, unsupported, false, "bind guard off: bind guard not supported: no cgroup v2; the nftables rules alone enforce the policy", ""},
	}
	for _, tt := range tests {
		on, note, err := Decide(tt.mode, tt.check)
		if on != tt.on || (tt.note == "") != (note == "") || !strings.Contains(note, tt.note) {
			t.Errorf("Decide(%v) = %v, %q; want %v, %q", tt.mode, on, note, tt.on, tt.note)
		}
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("Decide(%v) error = %v, want %q", tt.mode, err, tt.wantErr)
		}
	}
}

func TestParseMountinfo(t *testing.T) {
	hybrid := `23 1 0:21 / /sys rw - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
50 23 0:26 /.. /mnt/a\040b rw - cgroup2 cgroup2 rw
`
	ms, err := parseMountinfo(strings.NewReader(hybrid))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		if m.fstype == "cgroup2" {
			got = append(got, m.root+" "+m.point)
		}
	}
	if diff := cmp.Diff([]string{"/ /sys/fs/cgroup/unified", "/.. /mnt/a b"}, got); diff != "" {
		t.Errorf("cgroup2 mounts (-want +got):\n%s", diff)
	}
}

// TestOpenRoot: from this process (the host's mount namespace or an
// `ip netns exec` one alike) the root of the hierarchy is reached.
func TestOpenRoot(t *testing.T) {
	requireGuard(t)
	f, err := OpenRoot()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if cg2, root := isCgroup2Root(f); !cg2 || !root {
		t.Errorf("OpenRoot gave a directory that is cgroup2=%v root=%v", cg2, root)
	}
	// The private mount alone, as where no cgroup2 mount is visible.
	p, err := privateMount()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if cg2, root := isCgroup2Root(p); !cg2 || !root {
		t.Errorf("the private mount is cgroup2=%v root=%v, want the hierarchy's root", cg2, root)
	}
	if ms, _ := mounts("/proc/self/mountinfo"); ms != nil {
		for _, m := range ms {
			if m.fstype == "cgroup2" && slices.Contains(mountTargets, m.point) {
				t.Errorf("the private cgroup2 mount is visible to the process: %+v", m)
			}
		}
	}
}

// TestEntryBounds: the ports and scopes a spec holds are never more than
// entryBounds says; the owner sets' entries neither, where no port is
// address-scoped (scoped ones may intersect owners into sets of their own).
func TestEntryBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 200 {
		r := randomResolved(rng, 1+rng.IntN(100))
		b, e := entryBounds(r), encode(FromResolved(r))
		scoped := slices.ContainsFunc(r.Reservations, func(res model.Reservation) bool { return len(res.Addresses) > 0 })
		got := [4]int{len(e.ports), len(e.scopes), len(e.owners), len(e.ranges)}
		for j, name := range mapNames[1:] {
			if got[j] > b[j] && (j < 2 || !scoped) {
				t.Fatalf("policy %d: %d entries in %s, bound %d", i, got[j], name, b[j])
			}
		}
	}
}
