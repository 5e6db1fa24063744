package bindguard

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/policy"
)

func idr(rs ...uint32) []policy.IDRange {
	var out []policy.IDRange
	for i := 0; i+1 < len(rs); i += 2 {
		out = append(out, policy.IDRange{Lo: rs[i], Hi: rs[i+1]})
	}
	return out
}

func TestFromResolved(t *testing.T) {
	tcp := []policy.Protocol{policy.TCP}
	both := []policy.Protocol{policy.TCP, policy.UDP}
	r := &policy.Resolved{
		Settings: policy.Settings{AllowRoot: true},
		Reservations: []policy.Reservation{
			{Name: "a-range", Protocols: []policy.Protocol{policy.UDP}, Ports: []policy.PortRange{{Lo: 5070, Hi: 5072}},
				UIDs: idr(1200, 1299), GIDs: idr(300, 300)},
			{Name: "internal", Protocols: tcp, Ports: []policy.PortRange{{Lo: 80, Hi: 80}}, UIDs: idr(1000, 1000),
				Addresses: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
			{Name: "public", Protocols: tcp, Ports: []policy.PortRange{{Lo: 80, Hi: 80}}, UIDs: idr(33, 33, 1000, 1000),
				Addresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("2001:db8::/64")}},
			{Name: "web", Protocols: both, Ports: []policy.PortRange{{Lo: 443, Hi: 443}}, UIDs: idr(33, 33)},
		},
		// Root-only: 80 is scoped above, so the guard owns its other addresses.
		Guard: []policy.Reservation{{Name: policy.GuardName, Protocols: tcp,
			Ports: []policy.PortRange{{Lo: 79, Hi: 80}}, UIDs: idr(0, 0)}},
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
	tcp := []policy.Protocol{policy.TCP}
	r := &policy.Resolved{
		Reservations: []policy.Reservation{
			{Name: "v4", Protocols: tcp, Ports: []policy.PortRange{{Lo: 8080, Hi: 8080}}, UIDs: idr(10, 20),
				Addresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32")}},
			{Name: "v6", Protocols: tcp, Ports: []policy.PortRange{{Lo: 8080, Hi: 8080}}, UIDs: idr(15, 30),
				Addresses: []netip.Prefix{netip.MustParsePrefix("2001:db8::1/128")}},
			{Name: "v6only", Protocols: tcp, Ports: []policy.PortRange{{Lo: 9090, Hi: 9090}}, UIDs: idr(40, 40),
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
	s := FromResolved(&policy.Resolved{Settings: policy.Settings{AllowRoot: true}})
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
	check(0, policy.MaxID)
	check(1, policy.MaxID)
	check(100000, 165535)
	check(7, 7)
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		a, b := rnd.Uint32(), rnd.Uint32()
		check(min(a, b), max(a, b))
	}
}

func TestEncode(t *testing.T) {
	r := &policy.Resolved{
		Settings: policy.Settings{AllowRoot: true},
		Reservations: []policy.Reservation{
			{Name: "a", Protocols: []policy.Protocol{policy.TCP}, Ports: []policy.PortRange{{Lo: 80, Hi: 80}},
				UIDs: idr(33, 33, 1000, 1003), GIDs: idr(7, 7),
				Addresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}},
		},
	}
	e := encode(FromResolved(r), 1)
	if len(e.ports) != 1 || len(e.scopes) != 1 || len(e.owners) != 3 || len(e.ranges) != 1 {
		t.Fatalf("entries: %d ports, %d scopes, %d owners, %d ranges; want 1, 1, 3 (uids 0, 33, gid 7), 1 (1000/30)",
			len(e.ports), len(e.scopes), len(e.owners), len(e.ranges))
	}
	if k := e.ports[0].k; string(k) != "\x01\x06\x00\x50" {
		t.Errorf("ports key = %x, want gen 1, proto 6, port 80 big-endian", k)
	}
	sc := e.scopes[0].k
	if len(sc) != scopesKeySize || sc[4] != 1 || sc[5] != 6 || sc[6] != 0 || sc[7] != 80 ||
		string(sc[8:]) != "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xc0\x00\x02\x00" {
		t.Errorf("scopes key = %x", sc)
	}
	if got := sc[0]; got != 32+96+24 {
		t.Errorf("scopes prefix length = %d, want %d", got, 32+96+24)
	}
	for name, kvs := range map[string][]kv{mapPorts: e.ports, mapScopes: e.scopes, mapOwners: e.owners, mapRanges: e.ranges} {
		for _, x := range kvs {
			if genOf(name, x.k) != 1 {
				t.Errorf("%s key %x: generation %d, want 1", name, x.k, genOf(name, x.k))
			}
		}
	}
}

func TestDecide(t *testing.T) {
	unsupported := func() error { return errors.New("bind guard not supported: no cgroup v2") }
	supported := func() error { return nil }
	tests := []struct {
		mode    policy.BindGuardMode
		check   func() error
		on      bool
		note    string // substring
		wantErr string // substring
	}{
		{policy.BindGuardOff, unsupported, false, "", ""},
		{policy.BindGuardOn, supported, true, "", ""},
		{policy.BindGuardOn, unsupported, false, "", "bind_guard: on: bind guard not supported: no cgroup v2"},
		{policy.BindGuardAuto, supported, true, "", ""},
		{policy.BindGuardAuto, unsupported, false, "no cgroup v2; the nftables rules alone enforce the policy", ""},
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

func TestCgroupRoot(t *testing.T) {
	hybrid := `23 1 0:21 / /sys rw - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
`
	unified := "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
	subtreeFirst := "50 23 0:26 /system.slice /mnt/a\\040b rw - cgroup2 cgroup2 rw\n" + unified
	for _, tt := range []struct{ name, mountinfo, want string }{
		{"hybrid", hybrid, "/sys/fs/cgroup/unified"},
		{"unified", unified, "/sys/fs/cgroup"},
		{"root preferred", subtreeFirst, "/sys/fs/cgroup"},
		{"only a subtree", "50 23 0:26 /system.slice /mnt/a\\040b rw - cgroup2 cgroup2 rw\n", "/mnt/a b"},
	} {
		ms, err := parseMountinfo(strings.NewReader(tt.mountinfo))
		if err != nil {
			t.Fatal(err)
		}
		got, err := cgroupRoot(ms)
		if err != nil || got != tt.want {
			t.Errorf("%s: cgroupRoot = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
	if _, err := cgroupRoot(nil); err == nil {
		t.Errorf("cgroupRoot with no cgroup2 mount succeeded")
	}
}
