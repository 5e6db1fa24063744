package resolve

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"

	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/policy"
)

// SystemdUnits finds units' cgroups by asking systemd over D-Bus, the
// authority on which units run and where: a unit's cgroup is whatever
// systemd says (Slice=, Delegate=, transient scopes), not a guess from the
// tree. It is safe for concurrent use.
//
// Every UnitCgroups call has one deadline (5 s) across all its D-Bus calls,
// so a hung bus or a busy systemd fails a reload with an error instead of
// hanging it.
type SystemdUnits struct {
	conn    *sddbus.Conn
	bus     *dbus.Conn // conn's method connection, for GetUnit (go-systemd has no call for it)
	timeout time.Duration
}

var _ Units = (*SystemdUnits)(nil)

const systemdTimeout = 5 * time.Second

// NewSystemdUnits connects to systemd's manager on the system bus
// (DBUS_SYSTEM_BUS_ADDRESS, else /run/dbus/system_bus_socket), as
// go-systemd's NewSystemConnectionContext does. ctx is the connection's
// lifetime: when it is done the connection closes and every later call
// fails. Close it when done.
func NewSystemdUnits(ctx context.Context) (*SystemdUnits, error) {
	u, err := NewSystemdUnitsDial(func() (*dbus.Conn, error) {
		c, err := dbus.SystemBusPrivate(dbus.WithContext(ctx))
		if err != nil {
			return nil, err
		}
		// EXTERNAL with the uid, not the user name: no user lookup, so
		// no NSS in a static binary.
		if err := c.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
			c.Close()
			return nil, err
		}
		if err := c.Hello(); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	})
	if err != nil {
		return nil, fmt.Errorf("systemd: connect to the system bus: %w", err)
	}
	return u, nil
}

// NewSystemdUnitsDial is NewSystemdUnits on the connections dial returns
// (tests use a private bus). dial is called twice, go-systemd keeping one
// connection for calls and one for signals, and each connection must be
// authenticated and have said Hello.
func NewSystemdUnitsDial(dial func() (*dbus.Conn, error)) (*SystemdUnits, error) {
	var first *dbus.Conn
	conn, err := sddbus.NewConnection(func() (*dbus.Conn, error) {
		c, err := dial()
		if err == nil && first == nil {
			first = c // go-systemd's first connection is the one for calls
		}
		return c, err
	})
	if err != nil {
		return nil, err
	}
	return &SystemdUnits{conn: conn, bus: first, timeout: systemdTimeout}, nil
}

// Close closes the connections to the bus.
func (s *SystemdUnits) Close() { s.conn.Close() }

// SystemdRunning reports whether systemd is the init system, the test of
// sd_booted(3): systemd creates the directory /run/systemd/system early at
// boot. In a
// container without systemd, or on a host booted with another init, it is
// false and units are found in the cgroup tree instead.
func SystemdRunning() bool { return isDir("/run/systemd/system") }

func isDir(path string) bool {
	fi, err := os.Stat(path) // sd_booted tests "/run/systemd/system/": a link to a directory counts
	return err == nil && fi.IsDir()
}

// UnitCgroups lists the units systemd has loaded that match pattern, in
// whatever state (a unit that failed to reload its file may still run),
// and keeps those with a cgroup, which systemd sets while a unit runs and
// clears when it stops. A plain name that is not listed may be an alias
// ("sshd.service" for "ssh.service"), which the listing leaves out: it is
// looked up with GetUnit, which resolves aliases but, unlike reading a
// unit's properties, never loads a unit, and is reported under the unit's
// own name. A unit systemd has not loaded is no match.
func (s *SystemdUnits) UnitCgroups(pattern string) ([]UnitCgroup, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	listed, err := s.conn.ListUnitsByPatternsContext(ctx, []string{}, []string{pattern})
	if err != nil {
		return nil, fmt.Errorf("systemd: list units matching %q: %w", pattern, err)
	}
	names := make([]string, 0, len(listed))
	for _, u := range listed {
		names = append(names, u.Name)
	}
	if len(names) == 0 && !policy.IsUnitPattern(pattern) {
		name, err := s.primaryName(ctx, pattern)
		if err != nil {
			return nil, err
		}
		if name == "" {
			return nil, nil
		}
		names = append(names, name)
	}
	slices.Sort(names)
	var out []UnitCgroup
	for _, name := range names {
		// ControlGroup is on the unit type's interface
		// (org.freedesktop.systemd1.Service), not on Unit; the other
		// types (target, timer, path, device, automount) run no processes.
		typ := model.UnitType(name)
		if typ == "" {
			continue
		}
		p, err := s.conn.GetUnitTypePropertyContext(ctx, name, strings.ToUpper(typ[:1])+typ[1:], "ControlGroup")
		if err != nil {
			return nil, fmt.Errorf("systemd: control group of %s: %w", name, err)
		}
		path, ok := p.Value.Value().(string)
		if !ok {
			return nil, fmt.Errorf("systemd: control group of %s: type %s, want a string", name, p.Value.Signature())
		}
		if path != "" {
			out = append(out, UnitCgroup{Unit: name, Path: path})
		}
	}
	return out, nil
}

// primaryName returns the name of the loaded unit that name is one of the
// names of, or "" when systemd has loaded no such unit.
func (s *SystemdUnits) primaryName(ctx context.Context, name string) (string, error) {
	var path dbus.ObjectPath
	err := s.bus.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1").
		CallWithContext(ctx, "org.freedesktop.systemd1.Manager.GetUnit", 0, name).Store(&path)
	var derr dbus.Error
	if errors.As(err, &derr) && derr.Name == "org.freedesktop.systemd1.NoSuchUnit" {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("systemd: get unit %s: %w", name, err)
	}
	var id dbus.Variant
	err = s.bus.Object("org.freedesktop.systemd1", path).
		CallWithContext(ctx, "org.freedesktop.DBus.Properties.Get", 0, "org.freedesktop.systemd1.Unit", "Id").Store(&id)
	if err != nil {
		return "", fmt.Errorf("systemd: name of unit %s: %w", name, err)
	}
	primary, ok := id.Value().(string)
	if !ok || primary == "" {
		return "", fmt.Errorf("systemd: name of unit %s: got %s", name, id)
	}
	return primary, nil
}
