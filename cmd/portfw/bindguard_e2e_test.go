package main

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/testenv"
)

// TestBindGuardApply: with bind_guard: on, apply installs the eBPF guard
// for the namespace: the owner binds its low port with the threshold left
// at 1024, other uids get EPERM on reserved ports (TCP and UDP), root and
// unreserved ports are unaffected; remove takes it away.
func TestBindGuardApply(t *testing.T) {
	w := setup(t, "")
	if err := bindguard.Supported(); err != nil {
		t.Skipf("bind guard not supported here: %v", err)
	}
	policy := writePolicy(t, fmt.Sprintf(`version: 1
settings: { bind_guard: on }
reservations:
  - name: web
    ports: [80]
    protocols: [tcp]
    owner: { users: [%[1]d] }
  - name: app
    ports: [8080]
    owner: { users: [%[1]d] }
`, w.owner.UID))
	// The guard pins in the host's bpffs and attaches to its cgroup2, which
	// `ip netns exec` hides by remounting /sys: enter with nsenter --net.
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("nsenter", append([]string{"--net=" + w.Server.Path, "--", portfwBin(t)}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("portfw %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	t.Cleanup(func() { exec.Command("nsenter", "--net="+w.Server.Path, "--", portfwBin(t), "remove").Run() })
	// Under ip netns exec it refuses with a hint instead.
	if _, errOut, code := portfw(t, w.Server, "apply", "-f", policy); code != 1 || !strings.Contains(errOut, "nsenter --net=") {
		t.Errorf("bind_guard: on under ip netns exec: exit %d, %q; want 1 and the nsenter hint", code, errOut)
	}
	out := run("apply", "-f", policy)
	if !strings.Contains(out, "bind guard: on") {
		t.Errorf("apply does not report the bind guard:\n%s", out)
	}
	if got := sysctlIn(t, w.Server, "net.ipv4.ip_unprivileged_port_start"); got != "1024" {
		t.Errorf("threshold %s with the bind guard on, want 1024 (the guard grants low ports)", got)
	}
	for _, tc := range []struct {
		proto testenv.Proto
		port  uint16
		as    testenv.Cred
		want  string
	}{
		{testenv.TCP, 80, w.owner, "ok"},
		{testenv.TCP, 80, w.squat, "EPERM"},
		{testenv.TCP, 80, testenv.Root, "ok"},
		{testenv.TCP, 8080, w.squat, "EPERM"},
		{testenv.UDP, 8080, w.squat, "EPERM"},
		{testenv.UDP, 8080, w.owner, "ok"},
		{testenv.TCP, 9000, w.squat, "ok"},
	} {
		if got := w.Server.TryBind(t, tc.proto, any6(tc.port), tc.as); got != tc.want {
			t.Errorf("%s/%d as uid %d: %s, want %s", tc.proto, tc.port, tc.as.UID, got, tc.want)
		}
	}
	// The owner really serves its low port.
	srv := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(80), As: w.owner})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(80)}), srv.Reply)
	srv.Stop(t)
	// Another namespace is not guarded.
	if got := w.Client.TryBind(t, testenv.TCP, any6(8080), w.squat); got != "ok" {
		t.Errorf("bind in another namespace: %s, want ok", got)
	}
	if st := run("status"); !strings.Contains(st, "bind guard: on") {
		t.Errorf("status does not show the bind guard:\n%s", st)
	}
	run("remove")
	if got := w.Server.TryBind(t, testenv.TCP, any6(8080), w.squat); got != "ok" {
		t.Errorf("after remove, another uid's bind of 8080: %s, want ok", got)
	}
	if got := w.Server.TryBind(t, testenv.TCP, any6(80), w.owner); got != "EACCES" {
		t.Errorf("after remove, the owner's bind of 80: %s, want EACCES", got)
	}
}
