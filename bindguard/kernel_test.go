package bindguard

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/portfw/portfw/policy"
	"github.com/portfw/portfw/testenv"
)

// guardEnv is a namespace with local addresses to bind, a second namespace,
// a test cgroup, and the two users of the tests.
type guardEnv struct {
	ns, other *testenv.NS
	cg        *testCgroup
	owner     testenv.Cred
	squat     testenv.Cred
}

func newGuardEnv(t *testing.T) *guardEnv {
	t.Helper()
	requireGuard(t)
	e := &guardEnv{
		ns:    testenv.NewNS(t),
		other: testenv.NewNS(t),
		cg:    newCgroup(t),
		owner: testenv.User(t, "pfw-owner"),
		squat: testenv.User(t, "pfw-squat"),
	}
	for _, a := range []string{"192.0.2.10/32", "192.0.2.20/32"} {
		e.ns.IP(t, "addr", "add", a, "dev", "lo")
	}
	for _, a := range []string{"2001:db8::10/128", "2001:db8::20/128"} {
		e.ns.IP(t, "addr", "add", a, "dev", "lo", "nodad")
	}
	t.Cleanup(func() {
		// The guard is pinned, so it outlives a failed test unless removed.
		inNS(t, e.ns.Path, func() { Remove() })
	})
	return e
}

// applyIn applies in the test namespace from a helper process that exits
// right after, so what enforces the policy afterwards lives on pins alone.
func (e *guardEnv) applyIn(t *testing.T, spec Spec, cgroup string) {
	t.Helper()
	req, err := json.Marshal(applyRequest{Spec: spec, Cgroup: cgroup})
	if err != nil {
		t.Fatal(err)
	}
	helper(t, "apply", e.ns.Path, nil, nil, req)
}

func (e *guardEnv) applyHere(t *testing.T, spec Spec, cgroup string) {
	t.Helper()
	var err error
	inNS(t, e.ns.Path, func() { err = Apply(spec, cgroup) })
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func (e *guardEnv) status(t *testing.T) Info {
	t.Helper()
	var info Info
	var err error
	inNS(t, e.ns.Path, func() { info, err = Status() })
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	return info
}

// ids are the ids of the pinned maps and of the links' programs, to tell
// an update in place from a replace.
type ids struct {
	maps  []ebpf.MapID
	links []link.ID
	progs []ebpf.ProgramID
}

func (e *guardEnv) pinned(t *testing.T) ids {
	t.Helper()
	var out ids
	var err error
	inNS(t, e.ns.Path, func() {
		var cookie uint64
		if cookie, err = NetnsCookie(); err != nil {
			return
		}
		var g *guard
		if g, err = openGuard(pinDir(cookie)); err != nil {
			return
		}
		defer g.close()
		for _, name := range mapNames {
			info, ierr := g.maps[name].Info()
			if ierr != nil {
				err = ierr
				return
			}
			id, _ := info.ID()
			out.maps = append(out.maps, id)
		}
		for _, fam := range families {
			info, ierr := g.links[fam].Info()
			if ierr != nil {
				err = ierr
				return
			}
			out.links = append(out.links, info.ID)
			out.progs = append(out.progs, info.Program)
		}
	})
	if err != nil {
		t.Fatalf("read pins: %v", err)
	}
	return out
}

// around returns a uid range holding owner but not squat, so that the
// range lookup is what lets the owner in.
func around(owner, squat uint32) policy.IDRange {
	if squat < owner-3 || squat > owner {
		return policy.IDRange{Lo: owner - 3, Hi: owner}
	}
	return policy.IDRange{Lo: owner, Hi: owner + 3}
}

func (e *guardEnv) policy(names ...string) *policy.Resolved {
	both := []policy.Protocol{policy.TCP, policy.UDP}
	uid := []policy.IDRange{{Lo: e.owner.UID, Hi: e.owner.UID}}
	all := map[string]policy.Reservation{
		"high": {Protocols: both, Ports: []policy.PortRange{{Lo: 30080, Hi: 30080}}, UIDs: uid},
		"low":  {Protocols: both, Ports: []policy.PortRange{{Lo: 80, Hi: 80}}, UIDs: uid},
		"scoped": {Protocols: both, Ports: []policy.PortRange{{Lo: 30090, Hi: 30090}}, UIDs: uid,
			Addresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("2001:db8::10/128")}},
		"range": {Protocols: []policy.Protocol{policy.TCP}, Ports: []policy.PortRange{{Lo: 30100, Hi: 30100}},
			UIDs: []policy.IDRange{around(e.owner.UID, e.squat.UID)}},
		"group": {Protocols: []policy.Protocol{policy.UDP}, Ports: []policy.PortRange{{Lo: 30110, Hi: 30110}},
			GIDs: []policy.IDRange{{Lo: e.owner.GID, Hi: e.owner.GID}}},
		"new":  {Protocols: both, Ports: []policy.PortRange{{Lo: 30081, Hi: 30081}}, UIDs: uid},
		"bulk": {Protocols: both, Ports: []policy.PortRange{{Lo: 40000, Hi: 44999}}, UIDs: uid},
	}
	r := &policy.Resolved{Settings: policy.Settings{AllowRoot: true}}
	slices.Sort(names)
	for _, n := range names {
		res := all[n]
		res.Name = n
		r.Reservations = append(r.Reservations, res)
	}
	return r
}

var basePolicy = []string{"high", "low", "scoped", "range", "group"}

func TestGuard(t *testing.T) {
	e := newGuardEnv(t)
	ns, cg := e.ns.Path, e.cg
	rangeRes := around(e.owner.UID, e.squat.UID)
	inRange := testenv.Cred{UID: rangeRes.Lo + 1, GID: e.squat.GID}
	if inRange.UID == e.owner.UID {
		inRange.UID++
	}
	groupMember := testenv.Cred{UID: e.squat.UID, GID: e.owner.GID}

	// Before: the owner cannot bind port 80, so the threshold is in force.
	checkBinds(t, "no guard", ns, cg, e.owner, bindCase{"tcp4 0.0.0.0 80", "EACCES"})

	spec := FromResolved(e.policy(basePolicy...))
	e.applyIn(t, spec, cg.path)

	if got := strings.TrimSpace(e.ns.Run(t, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start")); got != "1024" {
		t.Fatalf("ip_unprivileged_port_start = %s, want 1024 (the guard needs no sysctl)", got)
	}
	info := e.status(t)
	if !info.Installed || !info.Attached || info.Cgroup != cg.path || info.Ports != len(spec.Ports) || info.Scopes != 4 {
		t.Errorf("Status = %+v, want installed and attached to %s with %d ports and 4 scopes", info, cg.path, len(spec.Ports))
	}

	t.Run("owner", func(t *testing.T) {
		checkBinds(t, "owner", ns, cg, e.owner,
			bindCase{"tcp4 0.0.0.0 30080", "ok"}, bindCase{"udp4 0.0.0.0 30080", "ok"},
			bindCase{"tcp6 :: 30080", "ok"}, bindCase{"udp6 :: 30080", "ok"},
			bindCase{"tcp4 0.0.0.0 80", "ok"}, bindCase{"udp4 0.0.0.0 80", "ok"},
			bindCase{"tcp6 :: 80", "ok"}, bindCase{"udp6 :: 80", "ok"},
			bindCase{"tcp4 192.0.2.10 30090", "ok"}, bindCase{"tcp6 2001:db8::10 30090", "ok"},
			bindCase{"tcp4 0.0.0.0 30090", "ok"}, bindCase{"udp6 :: 30090", "ok"},
			bindCase{"tcp4 0.0.0.0 30100", "ok"},
			// Unreserved low ports keep the kernel's threshold.
			bindCase{"tcp4 0.0.0.0 81", "EACCES"},
		)
	})
	t.Run("squatter", func(t *testing.T) {
		checkBinds(t, "squatter", ns, cg, e.squat,
			bindCase{"tcp4 0.0.0.0 30080", "EPERM"}, bindCase{"udp4 0.0.0.0 30080", "EPERM"},
			bindCase{"tcp6 :: 30080", "EPERM"}, bindCase{"udp6 :: 30080", "EPERM"},
			bindCase{"udp4 127.0.0.1 30080", "EPERM"}, bindCase{"udp6 ::1 30080", "EPERM"},
			bindCase{"tcp6 ::ffff:0.0.0.0 30080", "EPERM"}, bindCase{"udp6 ::ffff:127.0.0.1 30080", "EPERM"},
			bindCase{"tcp4 0.0.0.0 80", "EPERM"}, bindCase{"udp4 0.0.0.0 80", "EPERM"},
			bindCase{"tcp6 :: 80", "EPERM"}, bindCase{"udp6 :: 80", "EPERM"},
			bindCase{"tcp4 0.0.0.0 30100", "EPERM"}, bindCase{"udp4 0.0.0.0 30110", "EPERM"},
			// Unreserved ports are the kernel's business.
			bindCase{"tcp4 0.0.0.0 30200", "ok"}, bindCase{"udp6 :: 30200", "ok"},
			bindCase{"tcp4 0.0.0.0 81", "EACCES"},
			// A reservation has protocols: 30100 is reserved for TCP only.
			bindCase{"udp4 0.0.0.0 30100", "ok"},
		)
	})
	t.Run("addresses", func(t *testing.T) {
		checkBinds(t, "squatter", ns, cg, e.squat,
			bindCase{"tcp4 192.0.2.10 30090", "EPERM"}, bindCase{"udp4 192.0.2.10 30090", "EPERM"},
			bindCase{"tcp6 ::ffff:192.0.2.10 30090", "EPERM"}, bindCase{"tcp6 2001:db8::10 30090", "EPERM"},
			// Wildcards receive traffic for the scoped addresses too.
			bindCase{"tcp4 0.0.0.0 30090", "EPERM"}, bindCase{"udp6 :: 30090", "EPERM"},
			bindCase{"tcp6 ::ffff:0.0.0.0 30090", "EPERM"},
			// Addresses outside the scope are free.
			bindCase{"tcp4 192.0.2.20 30090", "ok"}, bindCase{"udp4 127.0.0.1 30090", "ok"},
			bindCase{"tcp6 2001:db8::20 30090", "ok"}, bindCase{"tcp6 ::ffff:192.0.2.20 30090", "ok"},
		)
	})
	t.Run("ranges and groups", func(t *testing.T) {
		checkBinds(t, "uid in range", ns, cg, inRange,
			bindCase{"tcp4 0.0.0.0 30100", "ok"}, bindCase{"tcp4 0.0.0.0 30080", "EPERM"})
		checkBinds(t, "group member", ns, cg, groupMember,
			bindCase{"udp4 0.0.0.0 30110", "ok"}, bindCase{"udp6 :: 30110", "ok"}, bindCase{"tcp4 0.0.0.0 30080", "EPERM"})
	})
	t.Run("root", func(t *testing.T) {
		checkBinds(t, "root", ns, cg, testenv.Root,
			bindCase{"tcp4 0.0.0.0 30080", "ok"}, bindCase{"udp6 :: 80", "ok"}, bindCase{"tcp4 192.0.2.10 30090", "ok"})
	})
	t.Run("outside", func(t *testing.T) {
		checkBinds(t, "outside the cgroup", ns, nil, e.squat,
			bindCase{"tcp4 0.0.0.0 30080", "ok"}, bindCase{"udp6 :: 30080", "ok"})
		checkBinds(t, "another namespace", e.other.Path, cg, e.squat,
			bindCase{"tcp4 0.0.0.0 30080", "ok"}, bindCase{"udp6 :: 30080", "ok"})
	})
}

func TestGuardAllowRootFalse(t *testing.T) {
	e := newGuardEnv(t)
	r := e.policy("high")
	r.Settings.AllowRoot = false
	e.applyHere(t, FromResolved(r), e.cg.path)
	checkBinds(t, "root", e.ns.Path, e.cg, testenv.Root, bindCase{"tcp4 0.0.0.0 30080", "EPERM"})
	checkBinds(t, "owner", e.ns.Path, e.cg, e.owner, bindCase{"tcp4 0.0.0.0 30080", "ok"})
}

func TestGuardLifecycle(t *testing.T) {
	e := newGuardEnv(t)
	ns, cg := e.ns.Path, e.cg

	// Installed by a process that has exited: the pins keep it.
	e.applyIn(t, FromResolved(e.policy(basePolicy...)), cg.path)
	checkBinds(t, "first apply", ns, cg, e.squat, bindCase{"udp4 0.0.0.0 30080", "EPERM"}, bindCase{"udp4 0.0.0.0 30081", "ok"})
	first := e.pinned(t)

	// A second apply swaps the maps' contents in place: same maps, same
	// programs, same links.
	e.applyIn(t, FromResolved(e.policy("low", "new")), cg.path)
	if got := e.pinned(t); !equalIDs(got, first) {
		t.Errorf("second apply replaced the guard (%+v -> %+v), want an update in place", first, got)
	}
	checkBinds(t, "second apply", ns, cg, e.squat,
		bindCase{"udp4 0.0.0.0 30080", "ok"}, bindCase{"tcp6 :: 30080", "ok"}, // no longer reserved
		bindCase{"udp4 0.0.0.0 30081", "EPERM"}, bindCase{"tcp6 :: 30081", "EPERM"}, // newly reserved
		bindCase{"tcp4 0.0.0.0 80", "EPERM"})
	checkBinds(t, "second apply", ns, cg, e.owner, bindCase{"udp4 0.0.0.0 30081", "ok"}, bindCase{"tcp4 0.0.0.0 80", "ok"})
	if info := e.status(t); info.Ports != 4 || info.Scopes != 0 {
		t.Errorf("Status after second apply = %+v, want 4 ports and no scopes (the old generation is gone)", info)
	}

	// Too big for the maps: new maps and programs, swapped into the same
	// links.
	e.applyHere(t, FromResolved(e.policy("low", "new", "bulk")), cg.path)
	third := e.pinned(t)
	if slices.Equal(third.maps, first.maps) || !slices.Equal(third.links, first.links) {
		t.Errorf("growing apply: ids %+v -> %+v, want new maps in the same links", first, third)
	}
	checkBinds(t, "grown", ns, cg, e.squat,
		bindCase{"tcp4 0.0.0.0 42000", "EPERM"}, bindCase{"udp4 0.0.0.0 30081", "EPERM"}, bindCase{"tcp4 0.0.0.0 30080", "ok"})
	checkBinds(t, "grown", ns, cg, e.owner, bindCase{"tcp4 0.0.0.0 44999", "ok"})

	// Another cgroup: the guard moves, the old cgroup is free again.
	cg2 := newCgroup(t)
	e.applyHere(t, FromResolved(e.policy("low", "new")), cg2.path)
	checkBinds(t, "moved, new cgroup", ns, cg2, e.squat, bindCase{"tcp4 0.0.0.0 30081", "EPERM"})
	checkBinds(t, "moved, old cgroup", ns, cg, e.squat, bindCase{"tcp4 0.0.0.0 30081", "ok"})
	if info := e.status(t); info.Cgroup != cg2.path {
		t.Errorf("Status cgroup = %q, want %q", info.Cgroup, cg2.path)
	}

	// Remove detaches and unpins.
	var found bool
	var err error
	inNS(t, ns, func() { found, err = Remove() })
	if err != nil || !found {
		t.Fatalf("Remove = %v, %v; want true, nil", found, err)
	}
	checkBinds(t, "removed", ns, cg2, e.squat, bindCase{"tcp4 0.0.0.0 30081", "ok"})
	checkBinds(t, "removed", ns, cg2, e.owner, bindCase{"tcp4 0.0.0.0 80", "EACCES"})
	if info := e.status(t); info.Installed {
		t.Errorf("Status after Remove = %+v, want not installed", info)
	}
	inNS(t, ns, func() { found, err = Remove() })
	if err != nil || found {
		t.Errorf("second Remove = %v, %v; want false, nil", found, err)
	}
}

func equalIDs(a, b ids) bool {
	return slices.Equal(a.maps, b.maps) && slices.Equal(a.links, b.links) && slices.Equal(a.progs, b.progs)
}

// A crash between attaching new programs and renaming their pins leaves
// pins that are not what the kernel runs. Updating those would change
// nothing; the next Apply must notice and replace.
func TestGuardRepairsStalePins(t *testing.T) {
	e := newGuardEnv(t)
	e.applyHere(t, FromResolved(e.policy("high")), e.cg.path)
	var err error
	inNS(t, e.ns.Path, func() {
		var cookie uint64
		if cookie, err = NetnsCookie(); err != nil {
			return
		}
		path := filepath.Join(pinDir(cookie), mapPorts)
		var m *ebpf.Map
		if m, err = ebpf.NewMap(mapSpec(mapPorts, 1)); err != nil {
			return
		}
		defer m.Close()
		if err = os.Remove(path); err == nil {
			err = m.Pin(path)
		}
	})
	if err != nil {
		t.Fatalf("swap a pin: %v", err)
	}
	e.applyHere(t, FromResolved(e.policy("new")), e.cg.path)
	checkBinds(t, "after repair", e.ns.Path, e.cg, e.squat,
		bindCase{"tcp4 0.0.0.0 30081", "EPERM"}, bindCase{"tcp4 0.0.0.0 30080", "ok"})
}

func TestStatusNotInstalled(t *testing.T) {
	requireGuard(t)
	ns := testenv.NewNS(t)
	var info Info
	var err error
	inNS(t, ns.Path, func() { info, err = Status() })
	if err != nil || info.Installed {
		t.Errorf("Status = %+v, %v; want not installed", info, err)
	}
	var found bool
	inNS(t, ns.Path, func() { found, err = Remove() })
	if err != nil || found {
		t.Errorf("Remove = %v, %v; want false, nil", found, err)
	}
}

func TestApplyBadCgroup(t *testing.T) {
	requireGuard(t)
	ns := testenv.NewNS(t)
	var err error
	inNS(t, ns.Path, func() { err = Apply(Spec{}, t.TempDir()) })
	if err == nil || !strings.Contains(err.Error(), "not a cgroup v2 directory") {
		t.Errorf("Apply to a plain directory = %v, want a cgroup error", err)
	}
	if errors.Is(err, ErrNotSupported) {
		t.Errorf("a bad cgroup path is not the host's lack of support: %v", err)
	}
}

// Applies from several processes at once serialise: the result is one
// whole policy, with no entries of another generation left over.
func TestGuardConcurrentApplies(t *testing.T) {
	e := newGuardEnv(t)
	specs := []Spec{FromResolved(e.policy("high")), FromResolved(e.policy("low", "new", "group"))}
	done := make(chan struct{})
	for i := range 6 {
		go func() {
			defer func() { done <- struct{}{} }()
			req, _ := json.Marshal(applyRequest{Spec: specs[i%2], Cgroup: e.cg.path})
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), helperEnv+"=apply", netnsEnv+"="+e.ns.Path)
			cmd.Stdin = bytes.NewReader(req)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("apply %d: %v: %s", i, err, out)
			}
		}()
	}
	for range 6 {
		<-done
	}
	var total int
	var err error
	inNS(t, e.ns.Path, func() {
		var cookie uint64
		if cookie, err = NetnsCookie(); err != nil {
			return
		}
		var g *guard
		if g, err = openGuard(pinDir(cookie)); err != nil {
			return
		}
		defer g.close()
		var keys [][]byte
		keys, err = allKeys(g.maps[mapPorts])
		total = len(keys)
	})
	if err != nil {
		t.Fatal(err)
	}
	info := e.status(t)
	if info.Ports != len(specs[0].Ports) && info.Ports != len(specs[1].Ports) || total != info.Ports {
		t.Errorf("after concurrent applies: %d active ports, %d keys in all; want %d or %d, and no others",
			info.Ports, total, len(specs[0].Ports), len(specs[1].Ports))
	}
}
