package tune

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/policy"
)

func res(name string, uid uint32, protos []policy.Protocol, ports ...policy.PortRange) policy.Reservation {
	return policy.Reservation{Name: name, Protocols: protos, Ports: ports, UIDs: []policy.IDRange{{Lo: uid, Hi: uid}}}
}

var both = []policy.Protocol{policy.TCP, policy.UDP}

func pr(lo, hi uint16) policy.PortRange { return policy.PortRange{Lo: lo, Hi: hi} }

func host() Host {
	return Host{UnprivPortStart: 1024, LocalPortRange: pr(32768, 60999), ReservedPorts: []policy.PortRange{pr(50000, 50000)}}
}

func resolved(mode string, rs ...policy.Reservation) *policy.Resolved {
	return &policy.Resolved{Settings: policy.Settings{UnprivilegedPortStart: mode}, Reservations: rs}
}

func guardPorts(p Plan) map[policy.Protocol]string {
	m := map[policy.Protocol]string{}
	for _, g := range p.Guard {
		if g.Name != policy.GuardName || len(g.UIDs) != 1 || g.UIDs[0] != (policy.IDRange{}) {
			panic("guard entry is not root-only")
		}
		m[g.Protocols[0]] = FormatPorts(g.Ports)
	}
	return m
}

func TestComputeAuto(t *testing.T) {
	r := resolved("auto",
		res("web", 33, []policy.Protocol{policy.TCP}, pr(80, 80), pr(443, 443)),
		res("dns", 53, both, pr(53, 53)),
		res("rootonly", 0, both, pr(25, 25)), // root-owned: does not lower the threshold
		res("sip", 1001, both, pr(5060, 5060), pr(40000, 40010)),
	)
	p, err := Compute(r, host(), State{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Threshold != 53 || p.Original != 1024 || p.Current != 1024 {
		t.Fatalf("threshold %d original %d current %d, want 53 1024 1024", p.Threshold, p.Original, p.Current)
	}
	want := map[policy.Protocol]string{policy.TCP: "54-79,81-442,444-1023", policy.UDP: "54-1023"}
	if diff := cmp.Diff(want, guardPorts(p)); diff != "" {
		t.Errorf("guard (-want +got):\n%s", diff)
	}
	if got := FormatPorts(p.ReservedPorts); got != "40000-40010,50000" {
		t.Errorf("reserved ports %q", got)
	}
	if got := FormatPorts(p.Added); got != "40000-40010" {
		t.Errorf("added %q", got)
	}
}

func TestComputeModes(t *testing.T) {
	web := res("web", 33, both, pr(80, 80))
	for _, tc := range []struct {
		name      string
		mode      string
		host      Host
		state     State
		threshold int
		guard     string
	}{
		{"auto lowers", "auto", host(), State{}, 80, "81-1023"},
		{"keep", "keep", host(), State{}, 1024, ""},
		{"number", "500", host(), State{}, 500, "500-1023"},
		{"number above the original raises, no guard", "2000", host(), State{}, 2000, ""},
		// portfw lowered it to 80 before; the original is the recorded 1024,
		// never portfw's own 80.
		{"reapply keeps the original", "auto", Host{UnprivPortStart: 80, LocalPortRange: pr(32768, 60999)}, State{UnprivPortStartOriginal: ptr(1024)}, 80, "81-1023"},
		{"keep after auto restores", "keep", Host{UnprivPortStart: 80, LocalPortRange: pr(32768, 60999)}, State{UnprivPortStartOriginal: ptr(1024)}, 1024, ""},
		// Already open before portfw (a container with 0): nothing to guard.
		{"already open", "auto", Host{UnprivPortStart: 0, LocalPortRange: pr(32768, 60999)}, State{}, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compute(resolved(tc.mode, web), tc.host, tc.state)
			if err != nil {
				t.Fatal(err)
			}
			if p.Threshold != tc.threshold {
				t.Errorf("threshold %d, want %d", p.Threshold, tc.threshold)
			}
			if got := guardPorts(p)[policy.TCP]; got != tc.guard {
				t.Errorf("tcp guard %q, want %q", got, tc.guard)
			}
		})
	}
}

func TestComputeRootOnlyPolicyChangesNothing(t *testing.T) {
	p, err := Compute(resolved("auto", res("smtp", 0, both, pr(25, 25))), host(), State{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Threshold != 1024 || len(p.Guard) != 0 {
		t.Fatalf("root-only policy: threshold %d guard %v", p.Threshold, p.Guard)
	}
}

// A reservation limited to some addresses does not lower the threshold, and
// its port stays in the guard so other addresses remain root-only.
func TestComputeScopedStaysGuarded(t *testing.T) {
	scoped := res("web-int", 33, both, pr(443, 443))
	scoped.Addresses = []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32")}
	p, err := Compute(resolved("auto", scoped, res("web", 33, both, pr(80, 80))), host(), State{})
	if err != nil {
		t.Fatal(err)
	}
	if got := guardPorts(p)[policy.TCP]; got != "81-1023" {
		t.Fatalf("guard %q, want 81-1023 (443 included)", got)
	}
}

// Ports portfw added before are not mistaken for the admin's own entries.
func TestReservedPortsReapply(t *testing.T) {
	h := host()
	h.ReservedPorts = []policy.PortRange{pr(40000, 40010), pr(50000, 50000)}
	st := State{ReservedPortsAdded: PortList{pr(40000, 40010)}}
	// The policy now reserves only 45000.
	p, err := Compute(resolved("keep", res("x", 1000, both, pr(45000, 45000))), h, st)
	if err != nil {
		t.Fatal(err)
	}
	if got := FormatPorts(p.ReservedPorts); got != "45000,50000" {
		t.Errorf("reserved %q, want 45000,50000", got)
	}
	if got := FormatPorts(p.Added); got != "45000" {
		t.Errorf("added %q, want 45000", got)
	}
}

func TestParsePorts(t *testing.T) {
	got, err := ParsePorts("8080, 30000-30999,8081\n")
	if err != nil || FormatPorts(got) != "8080-8081,30000-30999" {
		t.Fatalf("got %v %v", got, err)
	}
	for _, bad := range []string{"x", "10-5", "70000", "1-"} {
		if _, err := ParsePorts(bad); err == nil {
			t.Errorf("ParsePorts(%q) succeeded", bad)
		}
	}
}

func ptr(i int) *int { return &i }
