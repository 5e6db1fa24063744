package tune

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/internal/state"
	"github.com/portfw/portfw/internal/sysctl"
	"github.com/portfw/portfw/model"
)

func res(name string, uid uint32, protos []model.Protocol, ports ...model.PortRange) model.Reservation {
	return model.Reservation{Name: name, Protocols: protos, Ports: ports,
		Owners: model.Owners{Root: true, UIDs: []model.IDRange{model.ID(uid)}}}
}

var both = []model.Protocol{model.TCP, model.UDP}

func pr(lo, hi uint16) model.PortRange { return model.PortRange{Lo: lo, Hi: hi} }

func host() Host {
	return Host{UnprivPortStart: 1024, LocalPortRange: pr(32768, 60999), ReservedPorts: model.NewPorts(pr(50000, 50000))}
}

func resolved(ps model.PortStart, rs ...model.Reservation) *model.Resolved {
	return &model.Resolved{Settings: model.Settings{PortStart: ps}, Reservations: rs}
}

var (
	auto = model.PortStart{Mode: model.PortStartAuto}
	keep = model.PortStart{Mode: model.PortStartKeep}
)

func fixed(n uint16) model.PortStart { return model.PortStart{Mode: model.PortStartFixed, Value: n} }

func guardPorts(t *testing.T, p Plan) map[model.Protocol]string {
	t.Helper()
	m := map[model.Protocol]string{}
	for _, g := range p.Guard {
		if g.Name != model.GuardName || !g.Owners.Root || g.Owners.NonRoot() {
			t.Fatalf("guard entry %+v is not root-only", g)
		}
		m[g.Protocols[0]] = model.Ports(g.Ports).String()
	}
	return m
}

// TestAutoNeverLowers: auto leaves the threshold alone, with the guard
// (which grants owners their low ports) and without it (lowering would make
// every low UDP port readable by anyone), and says which it was.
func TestAutoNeverLowers(t *testing.T) {
	r := resolved(auto,
		res("web", 33, []model.Protocol{model.TCP}, pr(80, 80), pr(443, 443)),
		res("dns", 53, both, pr(53, 53)),
		res("rootonly", 0, both, pr(25, 25)),
		res("sip", 1001, both, pr(5060, 5060), pr(40000, 40010)),
	)
	r.Reservations[2].Owners = model.Owners{Root: true}
	for _, guard := range []bool{true, false} {
		p, err := Compute(r, host(), state.State{}, guard)
		if err != nil {
			t.Fatal(err)
		}
		if p.Threshold != 1024 || p.Original != 1024 || len(p.Guard) != 0 {
			t.Fatalf("guard=%v: threshold %d original %d guard %v, want 1024 left alone", guard, p.Threshold, p.Original, p.Guard)
		}
		if len(p.Notes) != 1 || !strings.Contains(p.Notes[0], "web, dns") {
			t.Fatalf("guard=%v: notes %q, want one naming web and dns (not rootonly, not sip)", guard, p.Notes)
		}
		if guard && !strings.Contains(p.Notes[0], "the bind guard lets the owners") {
			t.Errorf("with the guard: %q", p.Notes[0])
		}
		if !guard && (!strings.Contains(p.Notes[0], "every low UDP port readable by any user") || !strings.Contains(p.Notes[0], "unprivileged_port_start: 53")) {
			t.Errorf("without the guard: %q; want the reason and the number to set", p.Notes[0])
		}
		if got := p.ReservedPorts.String(); got != "40000-40010,50000" {
			t.Errorf("reserved ports %q", got)
		}
		if got := p.Added.String(); got != "40000-40010" {
			t.Errorf("added %q", got)
		}
	}
}

func TestModes(t *testing.T) {
	web := res("web", 33, both, pr(80, 80))
	for _, tc := range []struct {
		name      string
		mode      model.PortStart
		host      Host
		state     state.State
		guard     bool
		threshold int
		tcpGuard  string
		warn      string // a substring of a warning; "" for none about the threshold
	}{
		{"auto", auto, host(), state.State{}, false, 1024, "", ""},
		{"keep", keep, host(), state.State{}, false, 1024, "", ""},
		{"number without the guard warns", fixed(500), host(), state.State{}, false, 500, "500-1023", "a squatter on a UDP one reads every datagram"},
		{"number with the guard", fixed(500), host(), state.State{}, true, 500, "500-1023", ""},
		{"number above the original raises, no guard", fixed(2000), host(), state.State{}, false, 2000, "", ""},
		// portfw lowered it to 80 before; the original is the recorded
		// 1024, never portfw's own 80: auto now raises it back.
		{"auto after a number restores", auto, Host{UnprivPortStart: 80, LocalPortRange: pr(32768, 60999)}, state.State{UnprivPortStartOriginal: ptr(1024)}, false, 1024, "", ""},
		{"reapply keeps the original", fixed(80), Host{UnprivPortStart: 80, LocalPortRange: pr(32768, 60999)}, state.State{UnprivPortStartOriginal: ptr(1024)}, true, 80, "81-1023", ""},
		{"keep after a number restores", keep, Host{UnprivPortStart: 80, LocalPortRange: pr(32768, 60999)}, state.State{UnprivPortStartOriginal: ptr(1024)}, false, 1024, "", ""},
		// Already open before portfw (a container with 0): nothing to guard.
		{"already open", fixed(0), Host{UnprivPortStart: 0, LocalPortRange: pr(32768, 60999)}, state.State{}, false, 0, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compute(resolved(tc.mode, web), tc.host, tc.state, tc.guard)
			if err != nil {
				t.Fatal(err)
			}
			if p.Threshold != tc.threshold {
				t.Errorf("threshold %d, want %d", p.Threshold, tc.threshold)
			}
			if got := guardPorts(t, p)[model.TCP]; got != tc.tcpGuard {
				t.Errorf("tcp guard %q, want %q", got, tc.tcpGuard)
			}
			warned := strings.Contains(strings.Join(p.Warnings, "\n"), "without the bind guard lets any user bind")
			if warned != (tc.warn != "") || (tc.warn != "" && !strings.Contains(strings.Join(p.Warnings, "\n"), tc.warn)) {
				t.Errorf("warnings %q, want one containing %q", p.Warnings, tc.warn)
			}
		})
	}
}

// TestGuardCoversEveryProtocol: a lowered threshold opens the range to every
// protocol with ports, so the root-only guard holds it for each.
func TestGuardCoversEveryProtocol(t *testing.T) {
	p, err := Compute(resolved(fixed(80), res("web", 33, []model.Protocol{model.TCP}, pr(80, 80))), host(), state.State{}, true)
	if err != nil {
		t.Fatal(err)
	}
	want := map[model.Protocol]string{model.TCP: "81-1023", model.UDP: "80-1023", model.UDPLite: "80-1023"}
	if diff := cmp.Diff(want, guardPorts(t, p)); diff != "" {
		t.Errorf("guard (-want +got):\n%s", diff)
	}
}

// A reservation limited to some addresses stays in the guard, so other
// addresses remain root-only.
func TestScopedStaysGuarded(t *testing.T) {
	scoped := res("web-int", 33, both, pr(443, 443))
	scoped.Addresses = []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32")}
	p, err := Compute(resolved(fixed(80), scoped, res("web", 33, both, pr(80, 80))), host(), state.State{}, true)
	if err != nil {
		t.Fatal(err)
	}
	if got := guardPorts(t, p)[model.TCP]; got != "81-1023" {
		t.Fatalf("guard %q, want 81-1023 (443 included)", got)
	}
}

// Ports portfw added before are not mistaken for the admin's own entries.
func TestReservedPortsReapply(t *testing.T) {
	h := host()
	h.ReservedPorts = model.NewPorts(pr(40000, 40010), pr(50000, 50000))
	st := state.State{ReservedPortsAdded: model.NewPorts(pr(40000, 40010))}
	p, err := Compute(resolved(keep, res("x", 1000, both, pr(45000, 45000))), h, st, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.ReservedPorts.String(); got != "45000,50000" {
		t.Errorf("reserved %q, want 45000,50000", got)
	}
	if got := p.Added.String(); got != "45000" {
		t.Errorf("added %q, want 45000", got)
	}
}

// TestEphemeralExhaustion: a policy that leaves fewer than 1024 ephemeral
// ports is refused, naming the reservations that take the most.
func TestEphemeralExhaustion(t *testing.T) {
	_, err := Compute(resolved(keep,
		res("big", 1000, both, pr(30000, 65535)),
		res("small", 1001, both, pr(1000, 1000)),
	), host(), state.State{}, false)
	if !errors.Is(err, ErrEphemeral) || !strings.Contains(err.Error(), `big (28232 ports)`) || !strings.Contains(err.Error(), "leave 0 of its 28232") {
		t.Fatalf("Compute error = %v, want ErrEphemeral naming big", err)
	}
	// Leaving 1024 is fine; so is keeping an admin's own tight range as it was.
	if _, err := Compute(resolved(keep, res("most", 1000, both, pr(32768, 59975))), host(), state.State{}, false); err != nil {
		t.Errorf("a policy leaving 1024 ports: %v", err)
	}
	tight := host()
	tight.LocalPortRange = pr(60000, 60100)
	if _, err := Compute(resolved(keep, res("x", 1000, both, pr(8080, 8080))), tight, state.State{}, false); err != nil {
		t.Errorf("a policy outside an already small range: %v", err)
	}
}

// TestReadOnly: with a read-only /proc/sys a threshold change is refused
// before anything changes, and reserved ports are skipped with a warning.
func TestReadOnly(t *testing.T) {
	h := host()
	h.ReadOnly = errors.New("read-only")
	if _, err := Compute(resolved(fixed(80), res("web", 33, both, pr(80, 80))), h, state.State{}, true); err == nil || !strings.Contains(err.Error(), "cannot set "+UnprivPortStart) {
		t.Errorf("a threshold with read-only sysctls: %v", err)
	}
	p, err := Compute(resolved(auto, res("app", 33, both, pr(40000, 40000))), h, state.State{}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Changes()) != 0 || !strings.Contains(strings.Join(p.Warnings, "\n"), "cannot reserve ports 40000") {
		t.Errorf("changes %q warnings %q; want no writes and a warning", p.Changes(), p.Warnings)
	}
}

func TestHostWarnings(t *testing.T) {
	h := host()
	h.Syncookies, h.Fastopen = 2, 0x3
	p, err := Compute(resolved(keep, res("web", 33, []model.Protocol{model.TCP}, pr(8080, 8080))), h, state.State{}, false)
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(p.Warnings, "\n")
	if !strings.Contains(w, Syncookies+"=2") || !strings.Contains(w, Fastopen+"=3 enables TCP Fast Open for servers") {
		t.Errorf("warnings %q", p.Warnings)
	}
	p, _ = Compute(resolved(keep, res("dns", 33, []model.Protocol{model.UDP}, pr(8080, 8080))), h, state.State{}, false)
	if len(p.Warnings) != 0 {
		t.Errorf("a UDP-only policy got TCP warnings %q", p.Warnings)
	}
}

func TestReadHost(t *testing.T) {
	f := sysctl.NewFake()
	f.Values[ReservedPorts] = "8080, 30000-30999"
	h, err := ReadHost(f)
	if err != nil {
		t.Fatal(err)
	}
	if h.UnprivPortStart != 1024 || h.LocalPortRange != pr(32768, 60999) || h.ReservedPorts.String() != "8080,30000-30999" || h.ReadOnly != nil {
		t.Errorf("ReadHost = %+v", h)
	}
	f.ReadOnly = true
	if h, _ := ReadHost(f); h.ReadOnly == nil {
		t.Error("ReadHost did not see the read-only sysctls")
	}
	f.Values[LocalPortRange] = "60999 32768"
	if _, err := ReadHost(f); err == nil {
		t.Error("ReadHost accepted a reversed port range")
	}
}

func ptr(i int) *int { return &i }
