package audit

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/testenv"
)

// diagConnIn opens a sock_diag netlink socket inside the namespace at
// path (the library enters the namespace on a thread of its own).
func diagConnIn(t *testing.T, path string) *netlink.Conn {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, &netlink.Config{NetNS: int(f.Fd())})
	if err != nil {
		t.Fatalf("open sock_diag in %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// procsIn maps the processes of uid whose network namespace is the one at
// nsPath to their command lines, found without sock_diag: the pids an audit
// must name.
func procsIn(t *testing.T, nsPath string, uid uint32) map[int]string {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat(nsPath, &want); err != nil {
		t.Fatalf("stat %s: %v", nsPath, err)
	}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	pids := map[int]string{}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+d.Name()+"/ns/net", &st) != nil || st.Ino != want.Ino || st.Dev != want.Dev {
			continue
		}
		status, err := os.ReadFile("/proc/" + d.Name() + "/status")
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(status)) {
			if f := strings.Fields(line); len(f) == 5 && f[0] == "Uid:" && f[1] == strconv.FormatUint(uint64(uid), 10) {
				cmdline, _ := os.ReadFile("/proc/" + d.Name() + "/cmdline")
				pids[pid] = strings.ReplaceAll(string(cmdline), "\x00", " ")
			}
		}
	}
	return pids
}

// TestSocketsInNamespace runs real servers, an owner and a squatter, in a
// fresh namespace and audits that namespace through sock_diag.
func TestSocketsInNamespace(t *testing.T) {
	testenv.RequireNetNS(t)
	owner := testenv.User(t, "pfw-owner")
	squat := testenv.User(t, "pfw-squat")
	ns := testenv.NewNS(t)

	ns.Serve(t, testenv.ServeConfig{Addr: netip.MustParseAddrPort("0.0.0.0:8080"), As: owner})
	ns.Serve(t, testenv.ServeConfig{Addr: netip.MustParseAddrPort("[::]:8443"), As: squat})
	ns.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: netip.MustParseAddrPort("127.0.0.1:5060"), As: squat})
	ns.Serve(t, testenv.ServeConfig{Addr: netip.MustParseAddrPort("127.0.0.1:9999"), As: squat}) // not reserved

	res := &model.Resolved{
		Settings: model.Settings{Table: "portfw", AllowRoot: true},
		Reservations: []model.Reservation{
			{Name: "sip", Protocols: both, Ports: ports(port(5060)), Owners: model.Owners{Root: true, UIDs: ids(owner.UID, owner.UID)}},
			{Name: "web", Protocols: tcp, Ports: ports(port(8080), port(8443), port(8444)), Owners: model.Owners{Root: true, UIDs: ids(owner.UID, owner.UID)}},
		},
	}
	socks, err := socketsFrom(diagConnIn(t, ns.Path))
	if err != nil {
		t.Fatalf("sockets: %v", err)
	}
	rep := Classify(res, socks)

	squatPIDs, ownerPIDs := procsIn(t, ns.Path, squat.UID), procsIn(t, ns.Path, owner.UID)
	if len(squatPIDs) != 3 || len(ownerPIDs) != 1 {
		t.Fatalf("found squatter pids %v and owner pids %v in the namespace, want 3 and 1", squatPIDs, ownerPIDs)
	}
	type key struct {
		proto model.Protocol
		addr  string
		port  uint16
	}
	got := map[key]Finding{}
	for _, f := range rep.Findings {
		got[key{f.Protocol, f.Address.String(), f.Port}] = f
	}
	if len(got) != 3 || len(rep.Findings) != 3 {
		t.Fatalf("want 3 findings (udp 5060, tcp 8080, tcp 8443), got %+v", rep.Findings)
	}
	for k, want := range map[key]struct {
		res  string
		uid  uint32
		user string
		v    Verdict
		pids map[int]string // the processes it may name
		arg  string         // the server's -addr argument
	}{
		{model.TCP, "::", 8443}:        {"web", squat.UID, "pfw-squat", Squatter, squatPIDs, "[::]:8443"},
		{model.UDP, "127.0.0.1", 5060}: {"sip", squat.UID, "pfw-squat", Squatter, squatPIDs, "127.0.0.1:5060"},
		{model.TCP, "0.0.0.0", 8080}:   {"web", owner.UID, "pfw-owner", Owner, ownerPIDs, "0.0.0.0:8080"},
	} {
		f, ok := got[k]
		if !ok {
			t.Errorf("no finding for %v in %+v", k, rep.Findings)
			continue
		}
		if f.Reservation != want.res || f.UID != want.uid || f.User != want.user || f.Verdict != want.v {
			t.Errorf("%v: got %s %s uid %d user %q, want %s %s uid %d user %q", k, f.Reservation, f.Verdict, f.UID, f.User, want.res, want.v, want.uid, want.user)
		}
		if len(f.Processes) != 1 || f.Processes[0].Command != "peer" ||
			!strings.Contains(want.pids[f.Processes[0].PID]+" ", " -addr "+want.arg+" ") {
			t.Errorf("%v: processes %+v, want the one peer serving %s among %v", k, f.Processes, want.arg, want.pids)
		}
	}
	if rep.Squatters() != 2 {
		t.Errorf("Squatters() = %d, want 2", rep.Squatters())
	}
	wantFree := []Free{{"sip", model.TCP, []string{"5060"}}, {"web", model.TCP, []string{"8444"}}}
	if !slices.EqualFunc(rep.Free, wantFree, func(a, b Free) bool {
		return a.Reservation == b.Reservation && a.Protocol == b.Protocol && slices.Equal(a.Ports, b.Ports)
	}) {
		t.Errorf("free = %+v, want %+v", rep.Free, wantFree)
	}

	// The test binary's own namespace has sockets of its own; none of the
	// servers above may show up there (sock_diag is per namespace).
	host, err := Sockets()
	if err != nil {
		t.Fatalf("sockets of the host namespace: %v", err)
	}
	for _, s := range host {
		for _, f := range rep.Findings {
			if s.Inode == f.Inode {
				t.Errorf("socket %+v of the test namespace listed in the host namespace", s)
			}
		}
	}
}

// parseDiag takes the cgroup id from the INET_DIAG_CGROUP_ID attribute
// that follows the struct inet_diag_msg.
func TestParseDiagCgroupID(t *testing.T) {
	msg := make([]byte, 72)
	msg[0] = unix.AF_INET
	binary.BigEndian.PutUint16(msg[4:], 8080)
	copy(msg[8:], []byte{127, 0, 0, 1})
	binary.NativeEndian.PutUint32(msg[64:], 1000)
	binary.NativeEndian.PutUint32(msg[68:], 4242)
	attr := func(typ uint16, payload []byte) []byte {
		b := make([]byte, 4, 4+len(payload)+3)
		binary.NativeEndian.PutUint16(b, uint16(4+len(payload)))
		binary.NativeEndian.PutUint16(b[2:], typ)
		b = append(b, payload...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	id := binary.NativeEndian.AppendUint64(nil, 0x1234_5678_9abc)
	withAttrs := append(append(append([]byte{}, msg...), attr(1, []byte{1, 2, 3, 4, 5})...), attr(inetDiagCgroupID, id)...)

	for _, tc := range []struct {
		name string
		b    []byte
		want uint64
	}{
		{"with the attribute", withAttrs, 0x1234_5678_9abc},
		{"without attributes", msg, 0},
		{"truncated attributes", append(append([]byte{}, msg...), 0xff, 0), 0},
	} {
		s, ok := parseDiag(tc.b, unix.AF_INET, model.TCP)
		if !ok || s.Port != 8080 || s.UID != 1000 || s.Inode != 4242 || s.Cgroup != tc.want {
			t.Errorf("%s: parseDiag = %+v, %v; want port 8080 uid 1000 inode 4242 cgroup %#x", tc.name, s, ok, tc.want)
		}
	}
}

// TestSocketsCgroups serves from cgroups of the test's own in a fresh
// namespace: sock_diag names each listener's cgroup by the inode of its
// directory, the walk of the tree gives its path, and a cgroup owner owns
// the sockets made in it and below it, whatever their uid.
func TestSocketsCgroups(t *testing.T) {
	testenv.RequireNetNS(t)
	squat := testenv.User(t, "pfw-squat")
	ns := testenv.NewNS(t)
	owner := testenv.NewCgroup(t, nil)
	child := testenv.NewCgroup(t, owner)
	other := testenv.NewCgroup(t, nil)

	ns.Serve(t, testenv.ServeConfig{Addr: netip.MustParseAddrPort("0.0.0.0:8080"), As: squat, Cgroup: owner})
	ns.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: netip.MustParseAddrPort("[::]:8080"), As: squat, Cgroup: child})
	ns.Serve(t, testenv.ServeConfig{Addr: netip.MustParseAddrPort("[::]:8443"), As: squat, Cgroup: other})

	ino := func(c *testenv.Cgroup) uint64 {
		var st syscall.Stat_t
		if err := syscall.Stat(c.Dir, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	level := uint8(len(strings.Split(strings.Trim(owner.Path, "/"), "/")))
	res := &model.Resolved{
		Settings: model.Settings{Table: "portfw", AllowRoot: true},
		Reservations: []model.Reservation{{Name: "web", Protocols: both, Ports: ports(port(8080), port(8443)),
			Owners: model.Owners{Root: true, Cgroups: []model.Cgroup{{Source: owner.Path, Path: owner.Path, Level: level, ID: ino(owner)}}}}},
	}
	socks, err := socketsFrom(diagConnIn(t, ns.Path))
	if err != nil {
		t.Fatalf("sockets: %v", err)
	}
	type key struct {
		proto model.Protocol
		port  uint16
	}
	want := map[key]struct {
		cg *testenv.Cgroup
		v  Verdict
	}{
		{model.TCP, 8080}: {owner, Owner},
		{model.UDP, 8080}: {child, Owner},
		{model.TCP, 8443}: {other, Squatter},
	}
	rep := Classify(res, socks)
	if len(rep.Findings) != len(want) {
		t.Fatalf("want %d findings, got %+v", len(want), rep.Findings)
	}
	for _, f := range rep.Findings {
		w, ok := want[key{f.Protocol, f.Port}]
		if !ok {
			t.Errorf("unexpected finding %v", f)
			continue
		}
		if f.CgroupID != ino(w.cg) || f.CgroupPath != w.cg.Path || f.Unit != "" || f.Verdict != w.v {
			t.Errorf("%s %d: cgroup %d %q unit %q, %s; want cgroup %d (the inode of %s) %q, %s",
				f.Protocol, f.Port, f.CgroupID, f.CgroupPath, f.Unit, f.Verdict, ino(w.cg), w.cg.Dir, w.cg.Path, w.v)
		}
		if !strings.Contains(f.String(), ", cgroup "+w.cg.Path+", ") {
			t.Errorf("String() = %q, want it to name cgroup %s", f.String(), w.cg.Path)
		}
	}
	// The walk agrees with the directories: the child's ancestry is the
	// root, the owner, the child.
	cg, err := ReadCgroups()
	if err != nil {
		t.Fatal(err)
	}
	var rootSt syscall.Stat_t
	if err := syscall.Stat(filepath.Dir(owner.Dir), &rootSt); err != nil {
		t.Fatal(err)
	}
	if got, want := cg.Ancestry(ino(child)), []uint64{rootSt.Ino, ino(owner), ino(child)}; !slices.Equal(got, want) {
		t.Errorf("Ancestry(child) = %v, want %v", got, want)
	}
}
