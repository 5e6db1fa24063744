package resolve

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/testenv"
	"github.com/portfw/portfw/testenv/fakesystemd"
)

// TestSystemdUnits asks a stand-in for systemd on a private bus, reached
// the way the daemon reaches the real one: NewSystemdUnits on the system
// bus, DBUS_SYSTEM_BUS_ADDRESS pointing at the private bus.
func TestSystemdUnits(t *testing.T) {
	testenv.RequireTools(t, "dbus-daemon")
	sd := fakesystemd.Start(t)
	for _, u := range []fakesystemd.Unit{
		{Name: "portfw.service", ControlGroup: "/system.slice/portfw.service"},
		{Name: "app@2.service", ControlGroup: "/system.slice/system-app.slice/app@2.service"},
		{Name: "app@1.service", ControlGroup: "/system.slice/system-app.slice/app@1.service"},
		{Name: "app@3.service"}, // stopped instance: loaded, no cgroup
		{Name: "apps.service", ControlGroup: "/system.slice/apps.service"},
		{Name: "app@1.socket", ControlGroup: "/system.slice/system-app.slice/app@1.socket"},
		{Name: "idle.service", LoadState: "loaded", ActiveState: "inactive", SubState: "dead"},
		{Name: "failed.service", ActiveState: "failed", SubState: "failed"},
		{Name: "session-4.scope", ControlGroup: "/user.slice/user-1000.slice/session-4.scope"},
		{Name: "ssh.service", Aliases: []string{"sshd.service"}, ControlGroup: "/system.slice/ssh.service"},
		{Name: `dev-disk-by\x2duuid-0ab1.swap`, ControlGroup: `/system.slice/dev-disk-by\x2duuid-0ab1.swap`},
		{Name: "multi-user.target", ActiveState: "active", SubState: "active"}, // no cgroup interface
	} {
		sd.SetUnit(u)
	}
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", sd.Address)
	units, err := NewSystemdUnits(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(units.Close)

	for _, tc := range []struct {
		name, pattern string
		want          []UnitCgroup
	}{
		{"service", "portfw.service", []UnitCgroup{{"portfw.service", "/system.slice/portfw.service"}}},
		{"template instances, sorted, stopped one left out", "app@*.service", []UnitCgroup{
			{"app@1.service", "/system.slice/system-app.slice/app@1.service"},
			{"app@2.service", "/system.slice/system-app.slice/app@2.service"},
		}},
		{"glob matching nothing running", "app@3*", nil},
		{"glob matching nothing loaded", "web@*.service", nil},
		{"loaded, inactive", "idle.service", nil},
		{"loaded, failed", "failed.service", nil},
		{"not loaded", "nope.service", nil},
		{"scope", "session-4.scope", []UnitCgroup{{"session-4.scope", "/user.slice/user-1000.slice/session-4.scope"}}},
		{"alias, under the unit's own name", "sshd.service", []UnitCgroup{{"ssh.service", "/system.slice/ssh.service"}}},
		{"name escaped in the object path", `dev-disk-by\x2duuid-0ab1.swap`, []UnitCgroup{{`dev-disk-by\x2duuid-0ab1.swap`, `/system.slice/dev-disk-by\x2duuid-0ab1.swap`}}},
		{"type without a cgroup", "multi-user.target", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := units.UnitCgroups(tc.pattern)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("UnitCgroups(%q) (-want +got):\n%s", tc.pattern, diff)
			}
		})
	}

	t.Run("a unit starting and stopping", func(t *testing.T) {
		sd.SetUnit(fakesystemd.Unit{Name: "idle.service", ControlGroup: "/system.slice/idle.service"})
		got, err := units.UnitCgroups("idle.service")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]UnitCgroup{{"idle.service", "/system.slice/idle.service"}}, got); diff != "" {
			t.Errorf("started (-want +got):\n%s", diff)
		}
		sd.RemoveUnit("idle.service")
		if got, err := units.UnitCgroups("idle.service"); err != nil || got != nil {
			t.Errorf("unloaded: got %v, %v; want nothing", got, err)
		}
	})

	// Errors systemd answers with are the caller's to see, with what was
	// asked: a reload must fail rather than take "no unit" for an answer.
	for _, tc := range []struct {
		method, pattern, want string
	}{
		{"ListUnitsByPatterns", "portfw.service", `systemd: list units matching "portfw.service": Access denied`},
		{"Get", "app@*.service", `systemd: control group of app@1.service: Access denied`},
		{"GetUnit", "sshd.service", `systemd: get unit sshd.service: Access denied`},
	} {
		t.Run("error from "+tc.method, func(t *testing.T) {
			sd.Fail(tc.method, "org.freedesktop.DBus.Error.AccessDenied", "Access denied")
			defer sd.Fail(tc.method, "", "")
			got, err := units.UnitCgroups(tc.pattern)
			if err == nil {
				t.Fatalf("UnitCgroups(%q) = %v, want an error", tc.pattern, got)
			}
			if err.Error() != tc.want {
				t.Errorf("error %q, want %q", err, tc.want)
			}
			var derr dbus.Error
			if !errors.As(err, &derr) || derr.Name != "org.freedesktop.DBus.Error.AccessDenied" {
				t.Errorf("error %v does not wrap the D-Bus error", err)
			}
		})
	}
}

// TestSystemdUnitsHungBus checks that a systemd that never answers fails a
// call at its deadline instead of holding up the reload that made it.
func TestSystemdUnitsHungBus(t *testing.T) {
	testenv.RequireTools(t, "dbus-daemon")
	sd := fakesystemd.Start(t)
	sd.SetUnit(fakesystemd.Unit{Name: "portfw.service", ControlGroup: "/system.slice/portfw.service"})
	units, err := NewSystemdUnitsDial(sd.Dial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(units.Close)
	units.timeout = 200 * time.Millisecond
	for _, method := range []string{"ListUnitsByPatterns", "Get"} {
		t.Run(method, func(t *testing.T) {
			sd.Hang(method)
			defer sd.Fail(method, "", "")
			done := make(chan error, 1)
			go func() {
				_, err := units.UnitCgroups("portfw.service")
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("got error %v, want one wrapping %v", err, context.DeadlineExceeded)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("UnitCgroups did not return")
			}
		})
	}
	// The connection outlives a call that timed out.
	got, err := units.UnitCgroups("portfw.service")
	if err != nil || len(got) != 1 {
		t.Errorf("after the timeouts: got %v, %v; want portfw.service", got, err)
	}
}

func TestNewSystemdUnitsNoBus(t *testing.T) {
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path="+filepath.Join(t.TempDir(), "none"))
	u, err := NewSystemdUnits(t.Context())
	if err == nil {
		u.Close()
		t.Fatal("connected to a bus that is not there")
	}
	if !strings.HasPrefix(err.Error(), "systemd: connect to the system bus: ") {
		t.Errorf("error %q lacks its context", err)
	}
}

// TestSystemdRunning checks sd_booted's test on directories of our own;
// whether systemd runs here is the host's business.
func TestSystemdRunning(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{dir: true, link: true, file: false, filepath.Join(dir, "none"): false} {
		if got := isDir(path); got != want {
			t.Errorf("isDir(%s) = %v, want %v", path, got, want)
		}
	}
}
