package bindguard

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/testenv"
)

// programsOn lists the ids of the programs attached to a cgroup for one
// family.
func programsOn(t *testing.T, cg *testenv.Cgroup, fam int) []ebpf.ProgramID {
	t.Helper()
	res, err := link.QueryPrograms(link.QueryOptions{Target: cg.FD, Attach: attachType(fam)})
	if err != nil {
		t.Fatal(err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

type guardEnv struct {
	cg                *testenv.Cgroup
	owner, squat, grp testenv.Cred
}

func newGuardEnv(t *testing.T) *guardEnv {
	t.Helper()
	requireGuard(t)
	e := &guardEnv{cg: testenv.NewCgroup(t, nil),
		owner: testenv.User(t, "pfw-owner"), squat: testenv.User(t, "pfw-squat")}
	// A member of the owner group: another uid with the group as its gid.
	e.grp = testenv.Cred{UID: e.squat.UID, GID: 4242}
	return e
}

// policy reserves, for e.owner: 80/tcp (a low port), 8080 on every
// protocol, 9090/tcp on 192.0.2.10 and 2001:db8::10 only, 30000-30009 for
// a uid range around the owner, 7000 for group 4242; and, with the root
// guard, 81-82/tcp for root alone.
func (e *guardEnv) policy(allowRoot bool) *model.Resolved {
	own := func(o model.Owners) model.Owners { o.Root = allowRoot; return o }
	uid := own(model.Owners{UIDs: []model.IDRange{model.ID(e.owner.UID)}})
	all := []model.Protocol{model.TCP, model.UDP, model.UDPLite}
	tcp := []model.Protocol{model.TCP}
	return &model.Resolved{
		Settings: model.Settings{AllowRoot: allowRoot},
		Reservations: []model.Reservation{
			{Name: "app", Protocols: all, Ports: []model.PortRange{model.Port(8080)}, Owners: uid},
			{Name: "group", Protocols: tcp, Ports: []model.PortRange{model.Port(7000)}, Owners: own(model.Owners{GIDs: []model.IDRange{model.ID(4242)}})},
			{Name: "range", Protocols: tcp, Ports: []model.PortRange{{Lo: 30000, Hi: 30009}},
				Owners: own(model.Owners{UIDs: []model.IDRange{{Lo: e.owner.UID - 1, Hi: e.owner.UID + 1}}})},
			{Name: "scoped", Protocols: tcp, Ports: []model.PortRange{model.Port(9090)}, Owners: uid,
				Addresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("2001:db8::10/128")}},
			{Name: "web", Protocols: tcp, Ports: []model.PortRange{model.Port(80)}, Owners: uid},
		},
		Guard: []model.Reservation{{Name: model.GuardName, Protocols: tcp, Ports: []model.PortRange{{Lo: 81, Hi: 82}}, Owners: model.Owners{Root: true}}},
	}
}

// TestGuard: in the namespace it was applied in, for processes in the
// guarded cgroup, the owner binds its ports (its low port without any
// capability), everyone else gets EPERM on every protocol the bind hook
// sees, root passes, address scopes hold, and another namespace is not
// touched. The guard was installed by a process that exited.
func TestGuard(t *testing.T) {
	e := newGuardEnv(t)
	ns := testenv.NewNS(t)
	other := testenv.NewNS(t)
	ns.IP(t, "addr", "add", "192.0.2.10/24", "dev", "lo")
	ns.IP(t, "addr", "add", "192.0.2.20/24", "dev", "lo")
	ns.IP(t, "addr", "add", "2001:db8::10/64", "dev", "lo", "nodad")
	ns.IP(t, "addr", "add", "2001:db8::20/64", "dev", "lo", "nodad")
	applied := guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{e.policy(true)}, Cgroup: e.cg.Path})
	// What apply prints: the entries counted from the spec it wrote, the
	// rest read, equal to a Status that reads them all.
	if !reflect.DeepEqual(applied.Applied, applied.Info) || applied.Info.Ports == 0 || applied.Info.Scopes == 0 {
		t.Errorf("after apply: Applied %+v, Status %+v", applied.Applied, applied.Info)
	}

	checkBinds(t, "owner", ns.Path, e.cg, e.owner,
		bindCase{"tcp4 0.0.0.0 80", "ok"}, // below 1024, no capability: the guard grants it
		bindCase{"tcp6 :: 80", "ok"},
		bindCase{"tcp4 0.0.0.0 8080", "ok"},
		bindCase{"udp4 0.0.0.0 8080", "ok"},
		bindCase{"udp6 :: 8080", "ok"},
		bindCase{"udplite4 0.0.0.0 8080", "ok"},
		bindCase{"udplite6 :: 8080", "ok"},
		bindCase{"mptcp4 0.0.0.0 8080", "ok"},
		bindCase{"tcp4 192.0.2.10 9090", "ok"},
		bindCase{"tcp6 2001:db8::10 9090", "ok"},
		bindCase{"tcp4 0.0.0.0 30005", "ok"},
		bindCase{"tcp4 0.0.0.0 81", "EPERM"}, // root-only guard port
		bindCase{"tcp4 0.0.0.0 443", "EACCES"},
		bindCase{"tcp4 0.0.0.0 7000", "EPERM"},
	)
	checkBinds(t, "squatter", ns.Path, e.cg, e.squat,
		bindCase{"tcp4 0.0.0.0 80", "EPERM"},
		bindCase{"tcp4 0.0.0.0 8080", "EPERM"},
		bindCase{"tcp6 :: 8080", "EPERM"},
		bindCase{"tcp4 127.0.0.1 8080", "EPERM"},
		bindCase{"tcp6 ::1 8080", "EPERM"},
		bindCase{"tcp6 ::ffff:127.0.0.1 8080", "EPERM"},
		bindCase{"udp4 0.0.0.0 8080", "EPERM"},
		bindCase{"udp4 127.0.0.1 8080", "EPERM"},
		bindCase{"udp6 :: 8080", "EPERM"},
		bindCase{"udplite4 0.0.0.0 8080", "EPERM"},
		bindCase{"udplite6 ::1 8080", "EPERM"},
		bindCase{"mptcp6 :: 8080", "EPERM"},
		bindCase{"tcp4 192.0.2.10 9090", "EPERM"},
		bindCase{"tcp4 0.0.0.0 9090", "EPERM"}, // the wildcard would get 192.0.2.10's traffic
		bindCase{"tcp6 :: 9090", "EPERM"},
		bindCase{"tcp6 ::ffff:0.0.0.0 9090", "EPERM"},
		bindCase{"tcp4 192.0.2.20 9090", "ok"}, // an address nobody reserved
		bindCase{"tcp6 2001:db8::20 9090", "ok"},
		bindCase{"tcp4 0.0.0.0 30005", "EPERM"},
		bindCase{"udp4 0.0.0.0 30005", "ok"}, // the range is TCP only
		bindCase{"tcp4 0.0.0.0 9999", "ok"},
		bindCase{"tcp4 0.0.0.0 0", "ok"}, // the kernel picks an ephemeral port
	)
	checkBinds(t, "owner group", ns.Path, e.cg, e.grp, bindCase{"tcp4 0.0.0.0 7000", "ok"}, bindCase{"tcp4 0.0.0.0 8080", "EPERM"})
	checkBinds(t, "root", ns.Path, e.cg, testenv.Root, bindCase{"tcp4 0.0.0.0 8080", "ok"}, bindCase{"tcp4 0.0.0.0 81", "ok"}, bindCase{"udplite6 :: 8080", "ok"})
	checkBinds(t, "squatter in another namespace", other.Path, e.cg, e.squat, bindCase{"tcp4 0.0.0.0 8080", "ok"}, bindCase{"udp6 :: 8080", "ok"})
	checkBinds(t, "squatter outside the cgroup", ns.Path, nil, e.squat, bindCase{"tcp4 0.0.0.0 8080", "ok"})

	st := guardOp(t, ns.Path, guardRequest{Op: "status", Cgroup: e.cg.Path}).Info
	if !st.Attached || !st.Active || st.Namespaces != 1 || st.Ports != 3+1+10+1+1+2 || st.Scopes != 2 || st.Cgroup != e.cg.Path {
		t.Errorf("status = %+v", st)
	}
}

// TestGuardAllowRootFalse: root is refused like anyone else, except on the
// root-only guard ports.
func TestGuardAllowRootFalse(t *testing.T) {
	e := newGuardEnv(t)
	ns := testenv.NewNS(t)
	guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{e.policy(false)}, Cgroup: e.cg.Path})
	checkBinds(t, "root", ns.Path, e.cg, testenv.Root,
		bindCase{"tcp4 0.0.0.0 8080", "EPERM"}, bindCase{"udp6 :: 8080", "EPERM"}, bindCase{"tcp4 0.0.0.0 81", "ok"})
	checkBinds(t, "owner", ns.Path, e.cg, e.owner, bindCase{"tcp4 0.0.0.0 8080", "ok"}, bindCase{"tcp4 0.0.0.0 81", "EPERM"})
}

// TestGuardOneProgramForManyNamespaces: a hundred namespaces, each with a
// policy of its own, share one bind4 and one bind6 program; each enforces
// its own policy; removing one namespace's leaves the others; the entries
// of a deleted namespace are swept; the last remove detaches the programs.
func TestGuardOneProgramForManyNamespaces(t *testing.T) {
	e := newGuardEnv(t)
	const n = 100
	spaces := make([]*testenv.NS, n)
	// Namespace i reserves port 20000+i (and 19999, shared by all) for
	// uid 50000+i.
	specFor := func(i int) []*model.Resolved {
		return []*model.Resolved{{Reservations: []model.Reservation{{
			Name: "p", Protocols: []model.Protocol{model.TCP, model.UDP},
			Ports:  []model.PortRange{model.Port(19999), model.Port(uint16(20000 + i))},
			Owners: model.Owners{UIDs: []model.IDRange{model.ID(uint32(50000 + i))}},
		}}}}
	}
	for i := range spaces {
		spaces[i] = testenv.NewNS(t)
		guardOp(t, spaces[i].Path, guardRequest{Op: "apply", Policies: specFor(i), Cgroup: e.cg.Path})
	}
	for _, fam := range families {
		if ids := programsOn(t, e.cg, fam); len(ids) != 1 {
			t.Fatalf("bind%d programs on the cgroup after %d namespaces applied: %v, want exactly one", fam, n, ids)
		}
	}
	st := guardOp(t, spaces[0].Path, guardRequest{Op: "status", Cgroup: e.cg.Path}).Info
	if st.Namespaces != n {
		t.Fatalf("the programs guard %d namespaces, want %d", st.Namespaces, n)
	}
	for _, i := range []int{0, 1, 37, 99} {
		me := testenv.Cred{UID: uint32(50000 + i), GID: uint32(50000 + i)}
		next := testenv.Cred{UID: uint32(50000 + (i+1)%n), GID: 1}
		port := strconv.Itoa(20000 + i)
		checkBinds(t, fmt.Sprintf("owner in namespace %d", i), spaces[i].Path, e.cg, me,
			bindCase{"tcp4 0.0.0.0 " + port, "ok"}, bindCase{"udp6 :: 19999", "ok"})
		checkBinds(t, fmt.Sprintf("owner of namespace %d in namespace %d", (i+1)%n, i), spaces[i].Path, e.cg, next,
			bindCase{"tcp4 0.0.0.0 " + port, "EPERM"}, bindCase{"udp6 :: 19999", "EPERM"},
			// its own port number is nobody's business here
			bindCase{"tcp4 0.0.0.0 " + strconv.Itoa(20000+(i+1)%n), "ok"})
	}
	// Removing one namespace's policy leaves the others.
	if rep := guardOp(t, spaces[5].Path, guardRequest{Op: "remove", Cgroup: e.cg.Path}); !rep.Found {
		t.Error("remove found no entry for namespace 5")
	}
	checkBinds(t, "squatter in namespace 5 after its remove", spaces[5].Path, e.cg, e.squat, bindCase{"tcp4 0.0.0.0 20005", "ok"})
	checkBinds(t, "squatter in namespace 6", spaces[6].Path, e.cg, e.squat, bindCase{"tcp4 0.0.0.0 20006", "EPERM"})
	// A deleted namespace's entries go with the next sweep (apply runs one).
	deleted := cookieOfNS(t, spaces[7].Path)
	spaces[7].Delete(t)
	rep := guardOp(t, spaces[8].Path, guardRequest{Op: "sweep", Cgroup: e.cg.Path})
	if !slices.Contains(rep.Swept, deleted) || len(rep.Swept) != 1 {
		t.Errorf("sweep removed %v, want exactly the deleted namespace %d", rep.Swept, deleted)
	}
	if st := guardOp(t, spaces[8].Path, guardRequest{Op: "status", Cgroup: e.cg.Path}).Info; st.Namespaces != n-2 {
		t.Errorf("the programs guard %d namespaces after one remove and one sweep, want %d", st.Namespaces, n-2)
	}
	// Its inner maps went with it, in all four outer maps; the others' stay.
	innerCookies(t, e.cg.Path, func(name string, cookies map[uint64]int) {
		if cookies[deleted] != 0 || len(cookies) != n-2 {
			t.Errorf("map %s holds inner maps of %d namespaces after the sweep (%d of the deleted one), want %d and none",
				name, len(cookies), cookies[deleted], n-2)
		}
	})
	checkBinds(t, "squatter in namespace 6 after the sweep", spaces[6].Path, e.cg, e.squat, bindCase{"tcp4 0.0.0.0 20006", "EPERM"})
	// The last remove detaches the programs.
	for i, ns := range spaces {
		if i == 5 || i == 7 {
			continue
		}
		guardOp(t, ns.Path, guardRequest{Op: "remove", Cgroup: e.cg.Path})
	}
	for _, fam := range families {
		if ids := programsOn(t, e.cg, fam); len(ids) != 0 {
			t.Errorf("bind%d programs on the cgroup after every remove: %v, want none", fam, ids)
		}
	}
}

// TestGuardUpdatesInPlace: a hundred updates keep the same two programs,
// and a squatter binding in a loop the whole time never succeeds once,
// while the owner never fails. Half the updates come from separate
// processes (each reads the maps and writes what differs), half from one
// (a daemon: its Builder knows the maps), and one outgrows the maps (a new
// generation).
func TestGuardUpdatesInPlace(t *testing.T) {
	e := newGuardEnv(t)
	ns := testenv.NewNS(t)
	policy := func(i int) *model.Resolved {
		r := e.policy(true)
		// Every update changes something: one more port each time, and an
		// owner that alternates.
		extra := []model.IDRange{model.ID(e.owner.UID)}
		if i%2 == 1 {
			extra = append(extra, model.ID(uint32(60000+i)))
		}
		r.Reservations = append(r.Reservations, model.Reservation{Name: "extra", Protocols: []model.Protocol{model.UDP},
			Ports: []model.PortRange{model.Port(uint16(40000 + i))}, Owners: model.Owners{Root: true, UIDs: extra}})
		if i == 75 {
			// Outgrows the maps' room: a new generation.
			r.Reservations = append(r.Reservations, model.Reservation{Name: "big", Protocols: []model.Protocol{model.TCP},
				Ports: []model.PortRange{{Lo: 45000, Hi: 45999}}, Owners: model.Owners{Root: true, UIDs: extra}})
		}
		return r
	}
	guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{policy(0)}, Cgroup: e.cg.Path})
	before := map[int][]ebpf.ProgramID{4: programsOn(t, e.cg, 4), 6: programsOn(t, e.cg, 6)}
	squat := startBindLoop(t, ns.Path, e.cg, e.squat, "tcp4 0.0.0.0 8080", "udp6 :: 8080", "tcp6 :: 80")
	owner := startBindLoop(t, ns.Path, e.cg, e.owner, "tcp4 0.0.0.0 8080", "udp6 :: 8080", "tcp6 :: 80")
	for i := 1; i <= 50; i++ {
		guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{policy(i)}, Cgroup: e.cg.Path})
	}
	var daemon []*model.Resolved
	for i := 51; i <= 100; i++ {
		daemon = append(daemon, policy(i))
	}
	rep := guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: daemon, Cgroup: e.cg.Path})
	sq, ow := squat.stop(t), owner.stop(t)
	// The first of one process's applies reads the maps; the one that
	// outgrows them writes a new generation; every other writes its change.
	if rep.Incremental != 48 {
		t.Errorf("%d of 50 applies in one process wrote only their change, want 48", rep.Incremental)
	}
	for outcome, n := range sq {
		if !endsWith(outcome, " EPERM") {
			t.Errorf("the squatter's bind loop saw %q %d times during 100 updates", outcome, n)
		}
	}
	for outcome, n := range ow {
		if !endsWith(outcome, " ok") {
			t.Errorf("the owner's bind loop saw %q %d times during 100 updates", outcome, n)
		}
	}
	if len(sq) != 3 || len(ow) != 3 {
		t.Errorf("bind loops: squatter %v, owner %v", sq, ow)
	}
	for _, fam := range families {
		if got := programsOn(t, e.cg, fam); !slices.Equal(got, before[fam]) {
			t.Errorf("bind%d programs %v after 100 updates, were %v: updates must not replace them", fam, got, before[fam])
		}
	}
	// Only two generations of the namespace's maps are ever kept.
	innerCookies(t, e.cg.Path, func(name string, cookies map[uint64]int) {
		for _, n := range cookies {
			if n > 2 {
				t.Errorf("map %s holds %d generations after 100 updates, want at most 2", name, n)
			}
		}
	})
	checkBinds(t, "owner of the 100th update's port", ns.Path, e.cg, e.squat, bindCase{"udp4 0.0.0.0 40100", "EPERM"}, bindCase{"udp4 0.0.0.0 40099", "ok"})
}

// TestApplyBounds: a new generation's inner maps hold the spec's entries
// whether they were made empty from a bound while the spec was worked out,
// or made after it, or the spec outgrew the bound for some of them.
func TestApplyBounds(t *testing.T) {
	e := newGuardEnv(t)
	h, err := OpenHost(e.cg.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	r := e.policy(true)
	r.Reservations = append(r.Reservations, model.Reservation{Name: "many", Protocols: []model.Protocol{model.UDP},
		Ports: []model.PortRange{{Lo: 41000, Hi: 41199}}, Owners: model.Owners{UIDs: []model.IDRange{model.ID(e.owner.UID)}}})
	spec := FromResolved(r)
	want := encode(spec)
	bound := entryBounds(r)
	for i, tc := range []struct {
		name  string
		bound *[4]int
	}{{"no bound", nil}, {"its bound", &bound}, {"outgrown ports", &[4]int{0, 100, 100, 100}}, {"all outgrown", &[4]int{}}} {
		cookie := uint64(1<<62 + i) // no namespace's: the entries are only read back
		if _, err := h.apply(cookie, 1, func() Spec { return spec }, tc.bound); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		in, err := h.find()
		if err != nil || in == nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		net, ok, err := lookupNet(in.maps[mapNets], cookie)
		if err != nil || !ok {
			t.Fatalf("%s: no nets entry (%v)", tc.name, err)
		}
		cur, err := readCurrent(in, cookie, net.gen)
		if err != nil || cur == nil {
			t.Fatalf("%s: read back: %v", tc.name, err)
		}
		for _, name := range mapNames[1:] {
			kvs := want.of(name)
			if len(cur.ents[name]) != len(kvs) {
				t.Errorf("%s: map %s holds %d entries, want %d", tc.name, name, len(cur.ents[name]), len(kvs))
			}
			for _, kv := range kvs {
				if v, ok := cur.ents[name][string(kv.k)]; !ok || string(v) != string(kv.v) {
					t.Errorf("%s: map %s lacks entry %x", tc.name, name, kv.k)
				}
			}
		}
		cur.close()
		in.close()
		if found, err := h.Remove(cookie); err != nil || !found {
			t.Fatalf("%s: remove: %v, %v", tc.name, found, err)
		}
	}
}

// innerCookies calls f with each outer map's name and how many inner maps
// it holds by namespace cookie.
func innerCookies(t *testing.T, cgroup string, f func(name string, cookies map[uint64]int)) {
	t.Helper()
	h, err := OpenHost(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	in, err := h.find()
	if err != nil || in == nil {
		t.Fatal(err)
	}
	defer in.close()
	for _, name := range mapNames[1:] {
		keys, err := allKeys(in.maps[name])
		if err != nil {
			t.Fatal(err)
		}
		cookies := map[uint64]int{}
		for _, k := range keys {
			c, _ := parseOuterKey(k)
			cookies[c]++
		}
		f(name, cookies)
	}
}

func endsWith(s, suffix string) bool {
	return len(s) >= len(suffix) && s[len(s)-len(suffix):] == suffix
}

// attachAllow attaches to cg a bind4 program named name that allows every
// bind: one that is not portfw's own (another's, or an older layout's).
func attachAllow(t *testing.T, cg *testenv.Cgroup, name string) {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Bind,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, retAllow), asm.Return()}, License: "MIT"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: cg.FD, Program: p, Attach: ebpf.AttachCGroupInet4Bind, Flags: unix.BPF_F_ALLOW_MULTI}); err != nil {
		t.Fatal(err)
	}
}

// TestGuardForeignProgram: a program that only carries portfw's name (any
// root process can copy one) is not mistaken for the guard: portfw
// installs its own beside it and reports the impostor, which it never
// touches.
func TestGuardForeignProgram(t *testing.T) {
	e := newGuardEnv(t)
	ns := testenv.NewNS(t)
	attachAllow(t, e.cg, progName(4))
	guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{e.policy(true)}, Cgroup: e.cg.Path})
	checkBinds(t, "squatter", ns.Path, e.cg, e.squat, bindCase{"tcp4 0.0.0.0 8080", "EPERM"})
	st := guardOp(t, ns.Path, guardRequest{Op: "status", Cgroup: e.cg.Path}).Info
	if !st.Active || len(st.Foreign) != 1 {
		t.Errorf("status = %+v, want the guard active and one foreign program", st)
	}
	guardOp(t, ns.Path, guardRequest{Op: "remove", Cgroup: e.cg.Path})
	if ids := programsOn(t, e.cg, 4); len(ids) != 1 {
		t.Errorf("after remove the cgroup holds bind4 programs %v, want only the foreign one", ids)
	}
}

// TestGuardOtherLayout: an older portfw's program (another map layout, so
// another name) stays attached beside this one's and keeps enforcing what
// that version wrote: status names it, so an upgrade that left one behind
// is seen.
func TestGuardOtherLayout(t *testing.T) {
	e := newGuardEnv(t)
	ns := testenv.NewNS(t)
	attachAllow(t, e.cg, "portfw2_bind4")
	guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{e.policy(true)}, Cgroup: e.cg.Path})
	st := guardOp(t, ns.Path, guardRequest{Op: "status", Cgroup: e.cg.Path}).Info
	if !st.Active || len(st.Foreign) != 1 || !strings.Contains(st.Foreign[0], "portfw2_bind4): a portfw of another map layout") {
		t.Errorf("status = %+v, want the guard active and the old layout's program named", st)
	}
	guardOp(t, ns.Path, guardRequest{Op: "remove", Cgroup: e.cg.Path})
}

// TestOpenCgroupErrors: a cgroup path outside the hierarchy or missing is
// an error naming it.
func TestOpenCgroupErrors(t *testing.T) {
	requireGuard(t)
	for _, p := range []string{"/no-such-cgroup-pfw", "../../etc"} {
		if _, err := OpenHost(p); err == nil {
			t.Errorf("OpenHost(%q) succeeded", p)
		}
	}
}

// TestNetEntry: the nets map's values round-trip.
func TestNetEntry(t *testing.T) {
	e := netEntry{gen: 7, flags: 1, inode: 4026532000}
	if got := parseNetEntry(e.bytes()); got != e {
		t.Errorf("round trip %+v -> %+v", e, got)
	}
	k := outerKey(12345, 9)
	if c, g := parseOuterKey(k); c != 12345 || g != 9 || binary.NativeEndian.Uint32(k[12:]) != 0 {
		t.Errorf("outer key %x -> %d, %d", k, c, g)
	}
}

// TestGuardFoundOnce: a Host remembers the guard it found while the same
// programs stay attached, hands out descriptors of its own each time, and
// sees at once when another process detaches them or attaches new ones.
func TestGuardFoundOnce(t *testing.T) {
	e := newGuardEnv(t)
	ns := testenv.NewNS(t)
	guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{e.policy(true)}, Cgroup: e.cg.Path})
	h, err := OpenHost(e.cg.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ids := func(in *installed) []ebpf.ProgramID {
		var out []ebpf.ProgramID
		for _, fam := range families {
			info, err := in.progs[fam].Info()
			if err != nil {
				t.Fatal(err)
			}
			id, _ := info.ID()
			out = append(out, id)
		}
		return out
	}
	want := append(programsOn(t, e.cg, 4), programsOn(t, e.cg, 6)...)
	for i := range 3 { // the first finds, the others come from what it found
		in, err := h.find()
		if err != nil || in == nil || len(in.progs) != len(families) {
			t.Fatalf("find %d: %+v, %v", i, in, err)
		}
		if got := ids(in); !slices.Equal(got, want) {
			t.Fatalf("find %d: programs %v, attached %v", i, got, want)
		}
		if keys, err := allKeys(in.maps[mapNets]); err != nil || len(keys) != 1 {
			t.Fatalf("find %d: %d namespaces in the guard, %v", i, len(keys), err)
		}
		in.close() // the Host's own descriptors stay open
	}
	guardOp(t, ns.Path, guardRequest{Op: "remove", Cgroup: e.cg.Path})
	if in, err := h.find(); err != nil || (in != nil && len(in.progs) > 0) {
		t.Fatalf("after another process's remove, find: %+v, %v; want nothing", in, err)
	}
	guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{e.policy(true)}, Cgroup: e.cg.Path})
	again := append(programsOn(t, e.cg, 4), programsOn(t, e.cg, 6)...)
	in, err := h.find()
	if err != nil || in == nil || len(in.progs) != len(families) {
		t.Fatalf("after a new apply, find: %+v, %v", in, err)
	}
	defer in.close()
	if got := ids(in); !slices.Equal(got, again) || slices.Equal(got, want) {
		t.Fatalf("after a new apply, programs %v; attached %v, before %v", got, again, want)
	}
}

// TestHostLockInProcess: the guard's lock excludes the goroutines of one
// process too (its flock is on one descriptor, which every goroutine
// shares): a sweep beside an apply once detached the programs the apply
// had just attached.
func TestHostLockInProcess(t *testing.T) {
	e := newGuardEnv(t)
	h, err := OpenHost(e.cg.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	unlock, err := h.lock()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{})
	go func() {
		unlock2, err := h.lock()
		if err == nil {
			unlock2()
		}
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("a second goroutine took the lock while the first held it")
	case <-time.After(200 * time.Millisecond):
	}
	unlock()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the second goroutine did not get the lock after the first released it")
	}
}
