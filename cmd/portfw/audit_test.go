package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/portfw/portfw/audit"
	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/testenv"
)

// auditPolicy: web and sip belong to uid %[1]d. Ports stay above 1024 so
// no root-only guard depends on the host's sysctls.
const auditPolicy = `version: 1
reservations:
  - name: web
    ports: [8080, 8443]
    protocols: [tcp]
    owner: { users: [%[1]d] }
  - name: sip
    ports: [5060]
    owner: { users: [%[1]d] }
`

// runAuditWith runs `portfw audit` in-process on a fixed list of sockets.
func runAuditWith(t *testing.T, socks []audit.Socket, scanErr error, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	f := newFakeHost()
	var o, e bytes.Buffer
	a := f.app(&o, &e)
	a.host = func(o hostOptions) (*engine.Engine, error) {
		eng, err := f.app(nil, nil).host(o)
		if err == nil {
			eng.Host.Sockets = func() ([]audit.Socket, error) { return socks, scanErr }
		}
		return eng, err
	}
	code = runAudit(a, args)
	return o.String(), e.String(), code
}

func TestAuditExitCodesAndOutput(t *testing.T) {
	path := writePolicy(t, fmt.Sprintf(auditPolicy, 1000))
	owner := audit.Socket{Protocol: model.TCP, Addr: netip.MustParseAddr("0.0.0.0"), Port: 8080, UID: 1000, User: "www",
		Processes: []audit.Process{{PID: 10, Command: "httpd"}, {PID: 11, Command: "httpd"}},
		Cgroup:    4711, CgroupPath: "/system.slice/httpd.service", Unit: "httpd.service"}
	squatter := audit.Socket{Protocol: model.UDP, Addr: netip.MustParseAddr("::"), Port: 5060, UID: 999, User: "mallory",
		Processes: []audit.Process{{PID: 42, Command: "squat"}}, Cgroup: 815, CgroupPath: "/squat"}

	t.Run("clean", func(t *testing.T) {
		out, _, code := runAuditWith(t, []audit.Socket{owner}, nil, "-f", path)
		if code != exitOK {
			t.Errorf("exit %d, want 0\n%s", code, out)
		}
		for _, want := range []string{"no squatters", "UID USER UNIT PROCESSES", "owner web tcp 0.0.0.0 8080 1000 www httpd.service 10 httpd, 11 httpd",
			"free (nobody bound):", "sip 5060/tcp+udp", "web 8443/tcp"} {
			if !strings.Contains(squeeze(out), want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("squatter", func(t *testing.T) {
		out, _, code := runAuditWith(t, []audit.Socket{owner, squatter}, nil, "-f", path)
		if code != exitNo {
			t.Errorf("exit %d, want 1\n%s", code, out)
		}
		lines := strings.Split(out, "\n")
		if !strings.Contains(lines[0], "1 socket on reserved ports held by a SQUATTER") ||
			!strings.HasPrefix(lines[2], "VERDICT") || !strings.HasPrefix(lines[3], "SQUATTER  sip ") || !strings.HasPrefix(lines[4], "owner") {
			t.Errorf("want a headline, then the squatter first in the table:\n%s", out)
		}
		// A cgroup no unit manages shows as its path.
		if !strings.Contains(squeeze(lines[3]), " mallory /squat 42 squat") {
			t.Errorf("the squatter's row does not name its cgroup /squat:\n%s", out)
		}
	})
	t.Run("unknown cgroup", func(t *testing.T) {
		gone := squatter
		gone.CgroupPath = "" // removed since the socket was made
		out, _, _ := runAuditWith(t, []audit.Socket{gone}, nil, "-f", path)
		if !strings.Contains(squeeze(out), " mallory - 42 squat") {
			t.Errorf("a socket of an unknown cgroup should show - as its unit:\n%s", out)
		}
	})
	t.Run("json", func(t *testing.T) {
		out, _, code := runAuditWith(t, []audit.Socket{owner, squatter}, nil, "-f", path, "--json")
		if code != exitNo {
			t.Errorf("exit %d, want 1", code)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("parse JSON: %v\n%s", err, out)
		}
		want := map[string]any{
			"policy": path,
			"sockets": []any{
				map[string]any{"reservation": "sip", "protocol": "udp", "address": "::", "port": 5060.0, "uid": 999.0, "user": "mallory",
					"processes": []any{map[string]any{"pid": 42.0, "command": "squat"}}, "verdict": "squatter",
					"cgroup_id": 815.0, "cgroup": "/squat", "unit": ""},
				map[string]any{"reservation": "web", "protocol": "tcp", "address": "0.0.0.0", "port": 8080.0, "uid": 1000.0, "user": "www",
					"processes": []any{map[string]any{"pid": 10.0, "command": "httpd"}, map[string]any{"pid": 11.0, "command": "httpd"}},
					"verdict":   "owner", "cgroup_id": 4711.0, "cgroup": "/system.slice/httpd.service", "unit": "httpd.service"},
			},
			"free": []any{
				map[string]any{"reservation": "sip", "protocol": "tcp", "ports": []any{"5060"}},
				map[string]any{"reservation": "web", "protocol": "tcp", "ports": []any{"8443"}},
			},
			"squatters": 1.0,
			"version":   1.0,
		}
		if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
			t.Errorf("JSON:\n%s\nwant:\n%s", g, w)
		}
	})
	t.Run("nothing bound", func(t *testing.T) {
		out, _, code := runAuditWith(t, nil, nil, "-f", path, "--json")
		if code != exitOK || !strings.Contains(out, `"sockets": []`) || !strings.Contains(out, `"squatters": 0`) {
			t.Errorf("exit %d, want 0 with an empty list:\n%s", code, out)
		}
	})
	t.Run("bad policy", func(t *testing.T) {
		bad := writePolicy(t, "version: 1\nreservations:\n  - name: web\n    ports: [0]\n    owner: { users: [1000] }\n")
		_, errOut, code := runAuditWith(t, []audit.Socket{squatter}, nil, "-f", bad)
		if code != exitUsage || !strings.Contains(errOut, bad+":4:") {
			t.Errorf("exit %d, want 2 with the problem's place:\n%s", code, errOut)
		}
		if _, _, code := runAuditWith(t, nil, nil, "-f", bad+".missing"); code != exitUsage {
			t.Errorf("missing policy: exit %d, want 2", code)
		}
	})
	t.Run("netlink failure", func(t *testing.T) {
		_, errOut, code := runAuditWith(t, nil, errors.New("dump tcp4 sockets: operation not permitted"), "-f", path)
		if code != exitUsage || !strings.Contains(errOut, "portfw audit: dump tcp4 sockets") {
			t.Errorf("exit %d, want 2:\n%s", code, errOut)
		}
	})
	t.Run("usage", func(t *testing.T) {
		if _, _, code := runAuditWith(t, nil, nil, "-f", path, "extra"); code != exitUsage {
			t.Errorf("stray argument: exit %d, want 2", code)
		}
	})
}

// squeeze collapses runs of spaces, so table checks do not depend on
// column widths.
func squeeze(s string) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	return strings.Join(lines, "\n")
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// peerCmdline is the command line of pid with NULs as spaces.
func peerCmdline(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return strings.ReplaceAll(string(b), "\x00", " ")
}

// TestAuditNetNS runs the real binary in the server namespace while a real
// owner and a real squatter (user pfw-squat) serve reserved ports there.
// The squatter bound while the guard was off; turning it on afterwards
// names the squatter (a guard refuses binds, it cannot undo one).
func TestAuditNetNS(t *testing.T) {
	w := setup(t, strings.Replace(auditPolicy, "version: 1\n", "version: 1\nsettings: { bind_guard: off }\n", 1))
	path := writePolicy(t, fmt.Sprintf(auditPolicy, w.owner.UID))
	w.Server.Serve(t, testenv.ServeConfig{Addr: w.v4(8080), As: w.owner})
	sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8443), As: w.squat})
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(8443)}))

	applied := mustPortfw(t, w.Server, "apply", "-f", path)
	if !strings.Contains(applied, "SQUATTER: ") || !strings.Contains(applied, "8443") {
		t.Errorf("apply turning the guard on did not name the squatter already bound:\n%s", applied)
	}
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8443)}))

	out, errOut, code := portfw(t, w.Server, "audit", "-f", path, "--json")
	if code != exitNo {
		t.Fatalf("audit with a squatter: exit %d, want 1\n%s%s", code, out, errOut)
	}
	var rep auditJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("parse audit JSON: %v\n%s", err, out)
	}
	if rep.Squatters != 1 || len(rep.Sockets) != 2 {
		t.Fatalf("want 1 squatter among 2 sockets:\n%s", out)
	}
	s, o := rep.Sockets[0], rep.Sockets[1]
	if s.Verdict != audit.Squatter || s.Reservation != "web" || s.Protocol != model.TCP || s.Address != netip.IPv6Unspecified() ||
		s.Port != 8443 || s.UID != w.squat.UID || s.User != "pfw-squat" {
		t.Errorf("squatter finding: %+v", s)
	}
	if len(s.Processes) != 1 || !strings.Contains(peerCmdline(s.Processes[0].PID), " serve ") ||
		!strings.Contains(peerCmdline(s.Processes[0].PID)+" ", " -addr [::]:8443 ") {
		t.Errorf("squatter processes %+v: want the one peer serving [::]:8443 (its command line: %q)", s.Processes, peerCmdline(s.Processes[0].PID))
	}
	if o.Verdict != audit.Owner || o.Port != 8080 || o.UID != w.owner.UID || o.User != "pfw-owner" || o.Address != w.ServerV4 {
		t.Errorf("owner finding: %+v", o)
	}
	if len(rep.Free) != 2 || rep.Free[0].Reservation != "sip" || rep.Free[1].Reservation != "sip" {
		t.Errorf("free: want sip (tcp and udp), got %+v", rep.Free)
	}

	text, _, code := portfw(t, w.Server, "audit", "-f", path)
	if code != exitNo || !strings.Contains(text, "SQUATTER  web") || !strings.Contains(text, "pfw-squat") {
		t.Errorf("text audit: exit %d\n%s", code, text)
	}

	sq.Stop(t)
	text, errOut, code = portfw(t, w.Server, "audit", "-f", path)
	if code != exitOK || !strings.Contains(text, "no squatters") || !strings.Contains(squeeze(text), "\nweb 8443/tcp") {
		t.Errorf("audit once the squatter left: exit %d, want 0 with 8443 free\n%s%s", code, text, errOut)
	}

	bad := writePolicy(t, "version: 1\nreservations: [oops\n")
	if _, _, code := portfw(t, w.Server, "audit", "-f", bad); code != exitUsage {
		t.Errorf("audit with a bad policy: exit %d, want 2", code)
	}
}
