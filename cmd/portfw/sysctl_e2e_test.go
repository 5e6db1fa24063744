package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/portfw/portfw/testenv"
)

const lowPortPolicy = `version: 1
settings: { %s }
reservations:
  - name: web
    ports: [80]
    protocols: [tcp]
    owner: { users: [%d] }
`

const threshold = "net.ipv4.ip_unprivileged_port_start"

// TestLowPortWithTheGuard: by default the owner of 80/tcp binds and serves
// it without root while the threshold stays 1024, so no other low port
// opens to anyone; after remove the owner needs root again.
func TestLowPortWithTheGuard(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	if got := w.Server.TryBind(t, testenv.TCP, any6(80), w.owner); got != "EACCES" {
		t.Fatalf("before apply the owner's bind of 80: %s, want EACCES", got)
	}
	out := mustPortfw(t, w.Server, "apply", "-f", writePolicy(t, fmt.Sprintf(lowPortPolicy, "", w.owner.UID)))
	if !strings.Contains(out, "stays 1024: the bind guard lets the owners of web bind") {
		t.Errorf("apply does not say who grants the low port:\n%s", out)
	}
	if got := sysctlIn(t, w.Server, threshold); got != "1024" {
		t.Fatalf("threshold %s with the guard, want 1024", got)
	}
	owner := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(80), As: w.owner})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(80)}), owner.Reply)
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(80)}), owner.Reply)
	for _, p := range []testenv.Proto{testenv.TCP, testenv.UDP, testenv.UDPLite} {
		if got := w.Server.TryBind(t, p, any6(81), w.squat); got != "EACCES" {
			t.Errorf("another user's bind of %s/81: %s, want EACCES (nothing else opened)", p, got)
		}
	}
	owner.Stop(t)
	mustPortfw(t, w.Server, "remove")
	if got := w.Server.TryBind(t, testenv.TCP, any6(80), w.owner); got != "EACCES" {
		t.Errorf("after remove the owner's bind of 80: %s, want EACCES", got)
	}
}

// TestLowPortByNumber: a threshold set by number, without the guard, is
// lowered after the rules that guard the opened range are in: another user
// may bind 81 but reaches nobody; root serves 82; after remove the
// threshold is back and 81 is root-only again.
func TestLowPortByNumber(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	path := writePolicy(t, fmt.Sprintf(lowPortPolicy, "bind_guard: off, unprivileged_port_start: 80", w.owner.UID))
	out, errOut, code := portfw(t, w.Server, "apply", "-f", path)
	if code != 0 || !strings.Contains(out, "1024 -> 80") || !strings.Contains(out, "guard: 81-1023/tcp 80-1023/udp+udplite") ||
		!strings.Contains(errOut, "lets any user bind ports 80-1023") {
		t.Errorf("apply does not show the threshold, the guard and the warning: exit %d\n%s%s", code, out, errOut)
	}
	if got := sysctlIn(t, w.Server, threshold); got != "80" {
		t.Fatalf("threshold after apply %s, want 80", got)
	}
	owner := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(80), As: w.owner})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(80)}), owner.Reply)
	if got := w.Server.TryBind(t, testenv.TCP, any6(81), w.squat); got != "ok" {
		t.Fatalf("with the threshold at 80 another user's bind of 81: %s, want ok", got)
	}
	sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(81), As: w.squat})
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(81)}))
	sqUDP := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(81), As: w.squat})
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Proto: testenv.UDP, Addr: w.v4(81)}))
	if got := sq.Received(t); len(got) != 0 {
		t.Errorf("squatter on a guarded port read %q", got)
	}
	sqUDP.Stop(t)
	root := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(82), As: testenv.Root})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(82)}), root.Reply)
	st := mustPortfw(t, w.Server, "status")
	if !strings.Contains(st, "guard: 81-1023/tcp,80-1023/udp+udplite reserved for root") || !strings.Contains(st, "lowered by portfw from 1024") {
		t.Errorf("status does not report the guard and the threshold:\n%s", st)
	}
	owner.Stop(t)
	sq.Stop(t)
	mustPortfw(t, w.Server, "remove")
	if got := sysctlIn(t, w.Server, threshold); got != "1024" {
		t.Errorf("threshold after remove %s, want 1024", got)
	}
	if got := w.Server.TryBind(t, testenv.TCP, any6(81), w.squat); got != "EACCES" {
		t.Errorf("after remove another user's bind of 81: %s, want EACCES", got)
	}
}

// TestThresholdModes: keep never touches it, auto never lowers it, a number
// sets it, and re-applying never records portfw's own value as the
// original.
func TestThresholdModes(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	apply := func(mode string) {
		t.Helper()
		mustPortfw(t, w.Server, "apply", "-f", writePolicy(t, fmt.Sprintf(lowPortPolicy, "bind_guard: off, unprivileged_port_start: "+mode, w.owner.UID)))
	}
	get := func() string { t.Helper(); return sysctlIn(t, w.Server, threshold) }
	apply("keep")
	if got := get(); got != "1024" {
		t.Errorf("keep: threshold %s, want 1024", got)
	}
	apply("auto")
	if got := get(); got != "1024" {
		t.Errorf("auto without the guard: threshold %s, want 1024 (lowering would open low UDP ports to everyone)", got)
	}
	apply("500")
	if got := get(); got != "500" {
		t.Errorf("500: threshold %s", got)
	}
	sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(600), As: w.squat})
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(600)}))
	sq.Stop(t)
	apply("80")
	apply("80")
	if got := get(); got != "80" {
		t.Errorf("80: threshold %s", got)
	}
	apply("keep") // undoes portfw's change
	if got := get(); got != "1024" {
		t.Errorf("keep after a number: threshold %s, want the original 1024", got)
	}
	apply("80")
	mustPortfw(t, w.Server, "remove")
	if got := get(); got != "1024" {
		t.Errorf("after remove: threshold %s, want the original 1024", got)
	}
}

// TestReservedEphemeralPorts: reserved ports inside the ephemeral range go
// into ip_local_reserved_ports and come out on remove; the admin's own
// entries survive both.
func TestReservedEphemeralPorts(t *testing.T) {
	t.Parallel()
	w := setup(t, "")
	w.Server.Sysctl(t, "net.ipv4.ip_local_reserved_ports", "50000")
	policy := fmt.Sprintf(`version: 1
reservations:
  - name: app
    ports: [40000, "40100-40110", 8080]
    owner: { users: [%d] }
`, w.owner.UID)
	out, _, _ := portfw(t, w.Server, "check", "-f", writePolicy(t, policy))
	if !strings.Contains(out, "ephemeral range") {
		t.Errorf("check does not explain the ephemeral range:\n%s", out)
	}
	mustPortfw(t, w.Server, "apply", "-f", writePolicy(t, policy))
	if got := sysctlIn(t, w.Server, "net.ipv4.ip_local_reserved_ports"); got != "40000,40100-40110,50000" {
		t.Errorf("reserved ports after apply %q", got)
	}
	mustPortfw(t, w.Server, "apply", "-f", writePolicy(t, policy))
	if got := sysctlIn(t, w.Server, "net.ipv4.ip_local_reserved_ports"); got != "40000,40100-40110,50000" {
		t.Errorf("reserved ports after a second apply %q", got)
	}
	mustPortfw(t, w.Server, "remove")
	if got := sysctlIn(t, w.Server, "net.ipv4.ip_local_reserved_ports"); got != "50000" {
		t.Errorf("reserved ports after remove %q, want the admin's 50000", got)
	}
}
