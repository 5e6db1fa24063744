// Package fakesystemd is a stand-in for systemd's manager on D-Bus, for
// tests of code that asks systemd which units run and in which cgroups
// without a systemd to ask (containers, CI). It starts a private
// dbus-daemon and serves on it, under systemd's bus name
// org.freedesktop.systemd1, the part of systemd's API portfw uses, with
// systemd's signatures and error names:
//
//   - /org/freedesktop/systemd1, org.freedesktop.systemd1.Manager:
//     ListUnitsByPatterns(as states, as patterns) -> a(ssssssouso) and
//     GetUnit(s name) -> o.
//   - /org/freedesktop/systemd1/unit/<escaped name>,
//     org.freedesktop.DBus.Properties Get and GetAll, with Id, Names,
//     LoadState, ActiveState and SubState on org.freedesktop.systemd1.Unit
//     and ControlGroup on the unit type's interface (Service, Scope, ...).
//
// It follows systemd where tests could tell the difference: the listing
// has units under their own names only, never aliases, and matches
// patterns with fnmatch; GetUnit resolves aliases and fails with
// org.freedesktop.systemd1.NoSuchUnit for a unit not loaded; reading the
// properties of an unknown unit's path answers as systemd does after
// loading it on the spot, a "not-found" unit with no cgroup.
package fakesystemd

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/portfw/portfw/testenv"
)

const (
	busName      = "org.freedesktop.systemd1"
	managerPath  = "/org/freedesktop/systemd1"
	managerIface = "org.freedesktop.systemd1.Manager"
	unitIface    = "org.freedesktop.systemd1.Unit"
	unitPrefix   = "/org/freedesktop/systemd1/unit"
	propsIface   = "org.freedesktop.DBus.Properties"
)

// Unit is a unit as systemd holds it in memory.
type Unit struct {
	Name    string   // its own name, "app@1.service"
	Aliases []string // other names GetUnit and object paths resolve
	// LoadState defaults to "loaded". ActiveState and SubState default to
	// "active"/"running" with a ControlGroup, else "inactive"/"dead".
	LoadState, ActiveState, SubState string
	ControlGroup                     string // "" while not running
}

// Systemd is a running stand-in. Its methods may be called while clients
// are connected; changes are seen by the next call.
type Systemd struct {
	// Address is the private bus's address: set DBUS_SYSTEM_BUS_ADDRESS
	// to it, or connect with Dial.
	Address string

	conn   *dbus.Conn
	stop   chan struct{} // closed at cleanup: releases hung calls
	mu     sync.Mutex
	units  map[string]*Unit // by every name, aliases too
	faults map[string]fault // by method name: "ListUnitsByPatterns", "Get"
}

type fault struct {
	err  *dbus.Error
	hang bool
}

// Start runs a dbus-daemon of its own for the test and serves the stand-in
// on it, with no units. Everything is stopped by t.Cleanup. It needs
// dbus-daemon, gated like every tool the tests run (testenv.RequireTools).
func Start(t testing.TB) *Systemd {
	t.Helper()
	testenv.RequireTools(t, "dbus-daemon")
	// Not t.TempDir: a socket path must fit in 108 bytes, and test names
	// make long directories.
	dir, err := os.MkdirTemp("", "fakesystemd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	config := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(config, []byte(busConfig(filepath.Join(dir, "bus"))), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command("dbus-daemon", "--config-file="+config, "--nofork", "--nopidfile", "--print-address")
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("fakesystemd: start dbus-daemon: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	// The daemon prints its address once it listens.
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		addr <- strings.TrimSpace(line)
	}()
	s := &Systemd{stop: make(chan struct{}), units: map[string]*Unit{}, faults: map[string]fault{}}
	select {
	case s.Address = <-addr:
	case <-time.After(10 * time.Second):
	}
	if s.Address == "" {
		t.Fatalf("fakesystemd: dbus-daemon printed no address: %s", stderr.String())
	}
	s.conn, err = s.Dial()
	if err != nil {
		t.Fatalf("fakesystemd: connect to %s: %v", s.Address, err)
	}
	t.Cleanup(func() {
		close(s.stop)
		s.conn.Close()
	})
	if err := s.conn.Export(manager{s}, managerPath, managerIface); err != nil {
		t.Fatal(err)
	}
	if err := s.conn.ExportSubtree(properties{s}, unitPrefix, propsIface); err != nil {
		t.Fatal(err)
	}
	reply, err := s.conn.RequestName(busName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("fakesystemd: own %s: reply %v, %v", busName, reply, err)
	}
	return s
}

// busConfig is a bus anyone connected may use, listening on socket only:
// no service activation, no system policy.
func busConfig(socket string) string {
	return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=` + socket + `</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
`
}

// Dial opens a new connection to the bus, authenticated and having said
// Hello, for NewConnection-style constructors.
func (s *Systemd) Dial() (*dbus.Conn, error) { return dbus.Connect(s.Address) }

// SetUnit adds u, or replaces the unit of that name.
func (s *Systemd) SetUnit(u Unit) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeLocked(u.Name)
	if u.LoadState == "" {
		u.LoadState = "loaded"
	}
	if u.ActiveState == "" {
		u.ActiveState, u.SubState = "inactive", "dead"
		if u.ControlGroup != "" {
			u.ActiveState, u.SubState = "active", "running"
		}
	}
	for _, n := range append([]string{u.Name}, u.Aliases...) {
		s.units[n] = &u
	}
}

// RemoveUnit unloads the unit called name.
func (s *Systemd) RemoveUnit(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeLocked(name)
}

func (s *Systemd) removeLocked(name string) {
	u, ok := s.units[name]
	if !ok {
		return
	}
	for _, n := range append([]string{u.Name}, u.Aliases...) {
		delete(s.units, n)
	}
}

// Fail makes calls of method ("ListUnitsByPatterns", "GetUnit", "Get",
// "GetAll") fail with the D-Bus error name and message; an empty name
// makes them succeed again.
func (s *Systemd) Fail(method, name, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name == "" {
		delete(s.faults, method)
		return
	}
	s.faults[method] = fault{err: dbus.NewError(name, []any{message})}
}

// Hang makes calls of method never answer, as a systemd stuck in a long
// operation; they are released when the test ends.
func (s *Systemd) Hang(method string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[method] = fault{hang: true}
}

// enter applies the fault set for method, if any.
func (s *Systemd) enter(method string) *dbus.Error {
	s.mu.Lock()
	f := s.faults[method]
	s.mu.Unlock()
	if f.hang {
		<-s.stop
		return dbus.NewError("org.freedesktop.DBus.Error.NoReply", []any{"stand-in stopped"})
	}
	return f.err
}

// unitStatus is an element of ListUnitsByPatterns' reply, (ssssssouso).
type unitStatus struct {
	Name, Description, LoadState, ActiveState, SubState, Followed string
	Path                                                          dbus.ObjectPath
	JobID                                                         uint32
	JobType                                                       string
	JobPath                                                       dbus.ObjectPath
}

type manager struct{ s *Systemd }

// ListUnitsByPatterns lists units by their own names (systemd skips
// aliases) whose load, active or sub state is among states, if any, and
// whose name matches one of patterns with fnmatch, if any.
func (m manager) ListUnitsByPatterns(states, patterns []string) ([]unitStatus, *dbus.Error) {
	if err := m.s.enter("ListUnitsByPatterns"); err != nil {
		return nil, err
	}
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	out := []unitStatus{}
	for name, u := range m.s.units {
		if name != u.Name {
			continue
		}
		if len(states) > 0 && !slices.Contains(states, u.LoadState) && !slices.Contains(states, u.ActiveState) && !slices.Contains(states, u.SubState) {
			continue
		}
		if len(patterns) > 0 && !fnmatchAny(patterns, u.Name) {
			continue
		}
		out = append(out, unitStatus{
			Name: u.Name, Description: u.Name,
			LoadState: u.LoadState, ActiveState: u.ActiveState, SubState: u.SubState,
			Path: UnitPath(u.Name), JobPath: "/",
		})
	}
	return out, nil
}

// GetUnit returns the path of a loaded unit by any of its names.
func (m manager) GetUnit(name string) (dbus.ObjectPath, *dbus.Error) {
	if err := m.s.enter("GetUnit"); err != nil {
		return "", err
	}
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	u, ok := m.s.units[name]
	if !ok {
		return "", dbus.NewError("org.freedesktop.systemd1.NoSuchUnit", []any{fmt.Sprintf("Unit %s not loaded.", name)})
	}
	return UnitPath(u.Name), nil
}

type properties struct{ s *Systemd }

func (p properties) Get(msg dbus.Message, iface, name string) (dbus.Variant, *dbus.Error) {
	if err := p.s.enter("Get"); err != nil {
		return dbus.Variant{}, err
	}
	all, err := p.props(msg, iface)
	if err != nil {
		return dbus.Variant{}, err
	}
	v, ok := all[name]
	if !ok {
		return dbus.Variant{}, dbus.NewError("org.freedesktop.DBus.Error.UnknownProperty", []any{"Unknown property or interface."})
	}
	return v, nil
}

func (p properties) GetAll(msg dbus.Message, iface string) (map[string]dbus.Variant, *dbus.Error) {
	if err := p.s.enter("GetAll"); err != nil {
		return nil, err
	}
	return p.props(msg, iface)
}

// cgroupTypes are the unit types with a cgroup: ControlGroup is on their
// interface, as in systemd's bus_unit_cgroup_vtable.
var cgroupTypes = map[string]string{
	"service": "Service", "scope": "Scope", "slice": "Slice",
	"socket": "Socket", "mount": "Mount", "swap": "Swap",
}

// props returns the properties on iface of the unit at msg's path.
func (p properties) props(msg dbus.Message, iface string) (map[string]dbus.Variant, *dbus.Error) {
	objPath, _ := msg.Headers[dbus.FieldPath].Value().(dbus.ObjectPath)
	label := strings.TrimPrefix(string(objPath), unitPrefix+"/")
	if label == string(objPath) || strings.Contains(label, "/") {
		return nil, dbus.NewError("org.freedesktop.DBus.Error.UnknownObject", []any{fmt.Sprintf("Unknown object '%s'.", objPath)})
	}
	name := unescape(label)
	p.s.mu.Lock()
	u, ok := p.s.units[name]
	var unit Unit
	if ok {
		unit = *u
	}
	p.s.mu.Unlock()
	if !ok {
		// systemd loads a unit whose path is asked for: not found.
		unit = Unit{Name: name, LoadState: "not-found", ActiveState: "inactive", SubState: "dead"}
	}
	typ := cgroupTypes[name[strings.LastIndexByte(name, '.')+1:]]
	switch iface {
	case unitIface:
		return map[string]dbus.Variant{
			"Id":          dbus.MakeVariant(unit.Name),
			"Names":       dbus.MakeVariant(append([]string{unit.Name}, unit.Aliases...)),
			"Description": dbus.MakeVariant(unit.Name),
			"LoadState":   dbus.MakeVariant(unit.LoadState),
			"ActiveState": dbus.MakeVariant(unit.ActiveState),
			"SubState":    dbus.MakeVariant(unit.SubState),
		}, nil
	case "org.freedesktop.systemd1." + typ:
		if typ != "" {
			return map[string]dbus.Variant{"ControlGroup": dbus.MakeVariant(unit.ControlGroup)}, nil
		}
	}
	return nil, dbus.NewError("org.freedesktop.DBus.Error.UnknownInterface", []any{fmt.Sprintf("Unknown interface %s.", iface)})
}

// UnitPath is the object path of the unit called name: systemd's
// bus_label_escape, every byte but [A-Za-z0-9] (and a leading digit) as
// _xx. It is written here again, not taken from go-systemd, so that the
// stand-in checks the client's escaping rather than sharing it.
func UnitPath(name string) dbus.ObjectPath {
	if name == "" {
		return unitPrefix + "/_"
	}
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' && i > 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "_%02x", c)
		}
	}
	return dbus.ObjectPath(unitPrefix + "/" + b.String())
}

func unescape(label string) string {
	if label == "_" {
		return ""
	}
	var b strings.Builder
	for i := 0; i < len(label); i++ {
		if label[i] == '_' && i+2 < len(label) {
			if c, err := strconv.ParseUint(label[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(c))
				i += 2
				continue
			}
		}
		b.WriteByte(label[i])
	}
	return b.String()
}

// fnmatchAny is fnmatch(3) with FNM_NOESCAPE, as systemd matches unit
// names: a backslash is a plain character (unit names escape with \x2d).
func fnmatchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(strings.ReplaceAll(p, `\`, `\\`), name); ok {
			return true
		}
	}
	return false
}
