package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/portfw/portfw/testenv"
)

func sysctlIn(t *testing.T, ns *testenv.NS, name string) string {
	t.Helper()
	// cat, not sysctl(8): procps is not on a minimal Debian.
	return strings.TrimSpace(ns.Run(t, "cat", "/proc/sys/"+strings.ReplaceAll(name, ".", "/")))
}

const lowPortPolicy = `version: 1
settings: { unprivileged_port_start: %s }
reservations:
  - name: web
    ports: [80]
    protocols: [tcp]
    owner: { users: [%d] }
`

// TestLowPortForOwner: the owner of 80/tcp binds and serves it without
// root; another user may now bind 81 but reaches nobody; root serves 82;
// after remove the threshold is back and 81 is root-only again.
func TestLowPortForOwner(t *testing.T) {
	w := setup(t, "")
	if got := sysctlIn(t, w.Server, "net.ipv4.ip_unprivileged_port_start"); got != "1024" {
		t.Fatalf("fresh namespace threshold %s, want 1024", got)
	}
	if got := w.Server.TryBind(t, testenv.TCP, any6(80), w.owner); got != "EACCES" {
		t.Fatalf("before apply the owner's bind of 80: %s, want EACCES", got)
	}
	out := mustPortfw(t, w.Server, "apply", "-f", writePolicy(t, fmt.Sprintf(lowPortPolicy, "auto", w.owner.UID)))
	if !strings.Contains(out, "1024 -> 80") || !strings.Contains(out, "guard: 81-1023/tcp") {
		t.Errorf("apply output does not show the threshold and the guard:\n%s", out)
	}
	if got := sysctlIn(t, w.Server, "net.ipv4.ip_unprivileged_port_start"); got != "80" {
		t.Fatalf("threshold after apply %s, want 80", got)
	}
	owner := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(80), As: w.owner})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(80)}), owner.Reply)
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(80)}), owner.Reply)

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
	if !strings.Contains(st, "guard: 81-1023/tcp,80-1023/udp reserved for root") || !strings.Contains(st, "lowered by portfw from 1024") {
		t.Errorf("status does not report the guard and the threshold:\n%s", st)
	}

	owner.Stop(t)
	sq.Stop(t)
	mustPortfw(t, w.Server, "remove")
	if got := sysctlIn(t, w.Server, "net.ipv4.ip_unprivileged_port_start"); got != "1024" {
		t.Errorf("threshold after remove %s, want 1024", got)
	}
	if got := w.Server.TryBind(t, testenv.TCP, any6(81), w.squat); got != "EACCES" {
		t.Errorf("after remove another user's bind of 81: %s, want EACCES", got)
	}
}

// TestThresholdModes: keep never touches it, a number sets it, and
// re-applying never records portfw's own value as the original.
func TestThresholdModes(t *testing.T) {
	w := setup(t, "")
	apply := func(mode string) {
		t.Helper()
		mustPortfw(t, w.Server, "apply", "-f", writePolicy(t, fmt.Sprintf(lowPortPolicy, mode, w.owner.UID)))
	}
	threshold := func() string { t.Helper(); return sysctlIn(t, w.Server, "net.ipv4.ip_unprivileged_port_start") }

	apply("keep")
	if got := threshold(); got != "1024" {
		t.Errorf("keep: threshold %s, want 1024", got)
	}
	if got := w.Server.TryBind(t, testenv.TCP, any6(80), w.owner); got != "EACCES" {
		t.Errorf("keep: the owner's bind of 80: %s, want EACCES (keep grants nothing)", got)
	}
	apply("500")
	if got := threshold(); got != "500" {
		t.Errorf("500: threshold %s", got)
	}
	if got := w.Server.TryBind(t, testenv.TCP, any6(600), w.squat); got != "ok" {
		t.Errorf("500: bind of 600 by another user: %s, want ok", got)
	}
	sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(600), As: w.squat})
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(600)}))
	sq.Stop(t)
	apply("auto")
	apply("auto")
	if got := threshold(); got != "80" {
		t.Errorf("auto: threshold %s, want 80", got)
	}
	apply("keep") // undoes portfw's change
	if got := threshold(); got != "1024" {
		t.Errorf("keep after auto: threshold %s, want the original 1024", got)
	}
	apply("auto")
	mustPortfw(t, w.Server, "remove")
	if got := threshold(); got != "1024" {
		t.Errorf("after remove: threshold %s, want the original 1024", got)
	}
	// A policy that reserves a low port for root only changes nothing.
	mustPortfw(t, w.Server, "apply", "-f", writePolicy(t, "version: 1\nreservations:\n  - name: smtp\n    ports: [25]\n    owner: { users: [0] }\n"))
	if got := threshold(); got != "1024" {
		t.Errorf("root-only policy: threshold %s, want 1024", got)
	}
}

// TestReservedEphemeralPorts: reserved ports inside the ephemeral range go
// into ip_local_reserved_ports and come out on remove; the admin's own
// entries survive both.
func TestReservedEphemeralPorts(t *testing.T) {
	w := setup(t, "")
	w.Server.Sysctl(t, "net.ipv4.ip_local_reserved_ports", "50000")
	policy := fmt.Sprintf(`version: 1
reservations:
  - name: app
    ports: [40000, "40100-40110", 8080]
    owner: { users: [%d] }
`, w.owner.UID)
	_, errOut, _ := portfw(t, w.Server, "check", "-f", writePolicy(t, policy))
	if !strings.Contains(errOut, "ephemeral range") {
		t.Errorf("check does not warn about the ephemeral range:\n%s", errOut)
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
