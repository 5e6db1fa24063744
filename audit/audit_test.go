package audit

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/model"
)

func ports(rs ...model.PortRange) []model.PortRange { return rs }
func port(p uint16) model.PortRange                 { return model.PortRange{Lo: p, Hi: p} }
func ids(lo, hi uint32) []model.IDRange             { return []model.IDRange{{Lo: lo, Hi: hi}} }

var (
	tcp  = []model.Protocol{model.TCP}
	udp  = []model.Protocol{model.UDP}
	both = []model.Protocol{model.TCP, model.UDP}
)

// testPolicy has one reservation of each kind Classify must tell apart.
func testPolicy(allowRoot bool) *model.Resolved {
	return &model.Resolved{
		Settings: model.Settings{Table: "portfw", AllowRoot: allowRoot},
		Reservations: []model.Reservation{
			{Name: "dns", Protocols: udp, Ports: ports(port(53)), Owners: model.Owners{Root: allowRoot, UIDs: ids(100, 100)}},
			{Name: "range", Protocols: both, Ports: ports(model.PortRange{Lo: 30000, Hi: 30009}), Owners: model.Owners{Root: allowRoot, UIDs: ids(1200, 1299)}},
			{Name: "voip", Protocols: tcp, Ports: ports(port(5060)), Owners: model.Owners{Root: allowRoot, GIDs: ids(500, 500)}},
			{Name: "web", Protocols: tcp, Ports: ports(port(8080), port(8443)), Owners: model.Owners{Root: allowRoot, UIDs: ids(33, 33)}},
			{Name: "web-v4", Protocols: tcp, Ports: ports(port(80)), Owners: model.Owners{Root: allowRoot, UIDs: ids(33, 33)},
				Addresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}},
			{Name: "web-v6", Protocols: tcp, Ports: ports(port(80)), Owners: model.Owners{Root: allowRoot, UIDs: ids(34, 34)},
				Addresses: []netip.Prefix{netip.MustParsePrefix("2001:db8::/64")}},
		},
		// 80 is in the guard (it is reserved only on some addresses), 81 too.
		Guard: []model.Reservation{
			{Name: model.GuardName, Protocols: tcp, Ports: ports(model.PortRange{Lo: 80, Hi: 81}), Owners: model.Owners{Root: true}},
		},
	}
}

func sock(proto model.Protocol, addr string, p uint16, uid uint32, procs ...Process) Socket {
	return Socket{Protocol: proto, Addr: netip.MustParseAddr(addr), Port: p, UID: uid, Inode: uint64(p)*1000 + uint64(uid), Processes: procs}
}

// row is a finding cut down to what the table-driven cases compare.
type row struct {
	Reservation string
	Addr        string
	Port        uint16
	UID         uint32
	Verdict     Verdict
}

func rows(r Report) []row {
	out := []row{}
	for _, f := range r.Findings {
		out = append(out, row{f.Reservation, f.Address.String(), f.Port, f.UID, f.Verdict})
	}
	return out
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name      string
		allowRoot bool
		socks     []Socket
		want      []row
	}{
		{"owner uid", true, []Socket{sock(model.TCP, "0.0.0.0", 8080, 33)},
			[]row{{"web", "0.0.0.0", 8080, 33, Owner}}},
		{"other uid is a squatter", true, []Socket{sock(model.TCP, "::", 8443, 999)},
			[]row{{"web", "::", 8443, 999, Squatter}}},
		{"uid range", true, []Socket{sock(model.UDP, "::", 30005, 1250), sock(model.TCP, "::", 30006, 1300)},
			[]row{{"range", "::", 30006, 1300, Squatter}, {"range", "::", 30005, 1250, Owner}}},
		{"root with allow_root", true, []Socket{sock(model.TCP, "0.0.0.0", 8080, 0)},
			[]row{{"web", "0.0.0.0", 8080, 0, Owner}}},
		{"root without allow_root", false, []Socket{sock(model.TCP, "0.0.0.0", 8080, 0)},
			[]row{{"web", "0.0.0.0", 8080, 0, Squatter}}},
		{"group owner by the holder's fsgid", true, []Socket{
			sock(model.TCP, "0.0.0.0", 5060, 1000, Process{PID: 7, Command: "sipd", FSGID: 500}),
			sock(model.TCP, "::", 5060, 1000, Process{PID: 8, Command: "other", FSGID: 1000}),
			sock(model.TCP, "127.0.0.1", 5060, 1000), // no holder: no gid known
		}, []row{
			{"voip", "127.0.0.1", 5060, 1000, Squatter},
			{"voip", "::", 5060, 1000, Squatter},
			{"voip", "0.0.0.0", 5060, 1000, Owner},
		}},
		{"wrong protocol or port is not listed", true, []Socket{
			sock(model.TCP, "0.0.0.0", 53, 999), sock(model.UDP, "0.0.0.0", 8080, 999), sock(model.TCP, "0.0.0.0", 9999, 999),
		}, []row{}},
		{"guard: root only", false, []Socket{sock(model.TCP, "0.0.0.0", 81, 0), sock(model.TCP, "::1", 81, 33)},
			[]row{{"_guard", "::1", 81, 33, Squatter}, {"_guard", "0.0.0.0", 81, 0, Owner}}},
		{"scoped: address inside the prefix", true, []Socket{sock(model.TCP, "192.0.2.7", 80, 33)},
			// The guard holds 80 too, but this socket only gets traffic for
			// 192.0.2.7, which belongs to web-v4.
			[]row{{"web-v4", "192.0.2.7", 80, 33, Owner}}},
		{"scoped: v4-mapped address", true, []Socket{sock(model.TCP, "::ffff:192.0.2.7", 80, 999)},
			[]row{{"web-v4", "::ffff:192.0.2.7", 80, 999, Squatter}}},
		{"scoped: address outside every prefix falls to the guard", true, []Socket{sock(model.TCP, "198.51.100.1", 80, 33)},
			[]row{{"_guard", "198.51.100.1", 80, 33, Squatter}}},
		{"scoped: the guard's owner passes on scoped addresses", false, []Socket{sock(model.TCP, "2001:db8::1", 80, 0)},
			[]row{{"web-v6", "2001:db8::1", 80, 0, Owner}}},
		{"scoped: 0.0.0.0 gets IPv4 traffic only", true, []Socket{sock(model.TCP, "0.0.0.0", 80, 33)},
			// Owner on web-v4's addresses, squatter everywhere else.
			[]row{{"_guard", "0.0.0.0", 80, 33, Squatter}, {"web-v4", "0.0.0.0", 80, 33, Owner}}},
		{"scoped: :: gets both families", true, []Socket{sock(model.TCP, "::", 80, 34)},
			[]row{
				{"_guard", "::", 80, 34, Squatter},
				{"web-v4", "::", 80, 34, Squatter},
				{"web-v6", "::", 80, 34, Owner},
			}},
		{"scoped: root owns the wildcard everywhere", true, []Socket{sock(model.TCP, "::", 80, 0)},
			[]row{{"_guard", "::", 80, 0, Owner}, {"web-v4", "::", 80, 0, Owner}, {"web-v6", "::", 80, 0, Owner}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Classify(testPolicy(tc.allowRoot), tc.socks)
			if diff := cmp.Diff(tc.want, rows(got)); diff != "" {
				t.Errorf("findings (-want +got):\n%s", diff)
			}
			n := 0
			for _, r := range tc.want {
				if r.Verdict == Squatter {
					n++
				}
			}
			if got.Squatters() != n {
				t.Errorf("Squatters() = %d, want %d", got.Squatters(), n)
			}
		})
	}
}

func TestClassifyCarriesSocketDetails(t *testing.T) {
	s := sock(model.TCP, "::", 8443, 999, Process{PID: 42, Command: "squat", FSGID: 999}, Process{PID: 43, Command: "squat", FSGID: 999})
	s.User = "pfw-squat"
	got := Classify(testPolicy(true), []Socket{s, sock(model.TCP, "::", 8080, 33)})
	want := []Finding{
		{Reservation: "web", Protocol: model.TCP, Address: netip.MustParseAddr("::"), Port: 8443, UID: 999, User: "pfw-squat",
			Processes: s.Processes, Verdict: Squatter, Inode: s.Inode},
		{Reservation: "web", Protocol: model.TCP, Address: netip.MustParseAddr("::"), Port: 8080, UID: 33,
			Processes: []Process{}, Verdict: Owner, Inode: 8080*1000 + 33},
	}
	if diff := cmp.Diff(want, got.Findings, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
}

func TestClassifyFree(t *testing.T) {
	got := Classify(testPolicy(true), []Socket{
		sock(model.TCP, "0.0.0.0", 8080, 33),
		sock(model.UDP, "::", 30000, 1200),
		sock(model.UDP, "::", 30005, 999), // a squatter's port is not free either
		sock(model.UDP, "::", 53, 100),
		sock(model.TCP, "192.0.2.1", 80, 33),
	}).Free
	want := []Free{
		{model.GuardName, model.TCP, []string{"80-81"}}, // 80 is bound on a web-v4 address only
		{"range", model.TCP, []string{"30000-30009"}},
		{"range", model.UDP, []string{"30001-30004", "30006-30009"}},
		{"voip", model.TCP, []string{"5060"}},
		{"web", model.TCP, []string{"8443"}},
		{"web-v6", model.TCP, []string{"80"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("free (-want +got):\n%s", diff)
	}
}

func TestClassifyEmpty(t *testing.T) {
	got := Classify(&model.Resolved{}, nil)
	if got.Findings == nil || got.Free == nil || len(got.Findings)+len(got.Free) != 0 {
		t.Errorf("Classify(empty) = %#v, want empty non-nil lists (they print as [] in JSON)", got)
	}
}

func TestTracker(t *testing.T) {
	squat := Finding{Reservation: "web", Protocol: model.TCP, Address: netip.MustParseAddr("::"), Port: 8443, UID: 999, Verdict: Squatter, Inode: 1}
	other := squat
	other.Port, other.Inode = 8080, 2
	restarted := squat
	restarted.Inode = 3
	owner := Finding{Reservation: "web", Protocol: model.TCP, Address: netip.MustParseAddr("::"), Port: 8081, UID: 33, Verdict: Owner, Inode: 4}
	report := func(fs ...Finding) Report { return Report{Findings: fs} }

	var tr Tracker
	for i, step := range []struct {
		report Report
		want   []Finding
	}{
		{report(owner), nil},                             // owners are never news
		{report(squat, owner), []Finding{squat}},         // a new squatter
		{report(squat, owner), nil},                      // still there: logged once
		{report(squat, other), []Finding{other}},         // a second one
		{report(other), nil},                             // the first went away...
		{report(squat, other), []Finding{squat}},         // ...and came back: new again
		{report(restarted, other), []Finding{restarted}}, // a new socket on the same port
		{report(), nil},
	} {
		if diff := cmp.Diff(step.want, tr.New(step.report), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
			t.Errorf("step %d: New (-want +got):\n%s", i, diff)
		}
	}
}

func TestFinding(t *testing.T) {
	f := Finding{Reservation: "web", Protocol: model.TCP, Address: netip.MustParseAddr("::"), Port: 8443, UID: 999, User: "pfw-squat",
		Processes: []Process{{PID: 42, Command: "squat"}}, Verdict: Squatter}
	if got, want := f.String(), "tcp [::]:8443 uid 999 (pfw-squat), reservation web, held by 42 squat"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

// testTree is a cgroup tree as ReadCgroups would find it.
var testTree = NewCgroups(map[uint64]string{
	1:  "/",
	10: "/system.slice",
	11: "/system.slice/nginx.service",
	12: "/system.slice/nginx.service/workers",
	13: "/system.slice/other.service",
	20: "/user.slice",
})

var (
	nginxCG  = model.Cgroup{Source: "nginx.service", Unit: true, Path: "/system.slice/nginx.service", Level: 2, ID: 11}
	sliceCG  = model.Cgroup{Source: "/system.slice", Path: "/system.slice", Level: 1, ID: 10}
	rootCG   = model.Cgroup{Source: "/", Path: "/", Level: 0, ID: 1}
	waitCG   = model.Cgroup{Source: "db.service", Unit: true} // not running
	cgPolicy = &model.Resolved{
		Settings: model.Settings{Table: "portfw", AllowRoot: true},
		Reservations: []model.Reservation{
			{Name: "nginx", Protocols: tcp, Ports: ports(port(9000)), Owners: model.Owners{Root: true, Cgroups: []model.Cgroup{nginxCG}}},
			{Name: "slice", Protocols: tcp, Ports: ports(port(9001)), Owners: model.Owners{Root: true, Cgroups: []model.Cgroup{sliceCG}}},
			{Name: "waiting", Protocols: tcp, Ports: ports(port(9002)), Owners: model.Owners{Root: true, Cgroups: []model.Cgroup{waitCG}}},
			{Name: "mixed", Protocols: tcp, Ports: ports(port(9003)), Owners: model.Owners{Root: true, UIDs: ids(500, 500),
				Cgroups: []model.Cgroup{waitCG, nginxCG}}},
			{Name: "everyone", Protocols: tcp, Ports: ports(port(9004)), Owners: model.Owners{Cgroups: []model.Cgroup{rootCG}}},
		},
	}
)

// cgSock is a socket made in the cgroup with this id.
func cgSock(p uint16, uid uint32, cgroup uint64) Socket {
	s := sock(model.TCP, "0.0.0.0", p, uid)
	s.Cgroup, s.Inode = cgroup, uint64(p)*1000+cgroup
	return s
}

// cgRow is a finding cut down to what the cgroup cases compare.
type cgRow struct {
	Reservation string
	UID         uint32
	Cgroup      uint64
	Verdict     Verdict
}

func TestClassifyCgroups(t *testing.T) {
	for _, tc := range []struct {
		name  string
		socks []Socket
		want  []cgRow
	}{
		{"owner cgroup", []Socket{cgSock(9000, 999, 11)}, []cgRow{{"nginx", 999, 11, Owner}}},
		{"child cgroup", []Socket{cgSock(9000, 999, 12)}, []cgRow{{"nginx", 999, 12, Owner}}},
		{"parent slice is not below the owner", []Socket{cgSock(9000, 999, 10)}, []cgRow{{"nginx", 999, 10, Squatter}}},
		{"sibling", []Socket{cgSock(9000, 999, 13)}, []cgRow{{"nginx", 999, 13, Squatter}}},
		{"slice owner owns its units and itself", []Socket{cgSock(9001, 999, 13), cgSock(9001, 999, 12), cgSock(9001, 999, 10), cgSock(9001, 999, 20)},
			[]cgRow{{"slice", 999, 20, Squatter}, {"slice", 999, 10, Owner}, {"slice", 999, 12, Owner}, {"slice", 999, 13, Owner}}},
		{"root cgroup", []Socket{cgSock(9000, 999, 1)}, []cgRow{{"nginx", 999, 1, Squatter}}},
		{"root cgroup owner owns every known cgroup", []Socket{cgSock(9004, 999, 1), cgSock(9004, 999, 12)},
			[]cgRow{{"everyone", 999, 1, Owner}, {"everyone", 999, 12, Owner}}},
		{"unknown id (removed since)", []Socket{cgSock(9000, 999, 99), cgSock(9001, 999, 99)},
			[]cgRow{{"nginx", 999, 99, Squatter}, {"slice", 999, 99, Squatter}}},
		{"no cgroup reported", []Socket{cgSock(9000, 999, 0)}, []cgRow{{"nginx", 999, 0, Squatter}}},
		// A waiting owner has id 0: it must not match a socket whose
		// kernel reported no cgroup (0) either.
		{"waiting owner owns nothing", []Socket{cgSock(9002, 999, 0), cgSock(9002, 999, 11)},
			[]cgRow{{"waiting", 999, 0, Squatter}, {"waiting", 999, 11, Squatter}}},
		{"waiting owner still lets root pass", []Socket{cgSock(9002, 0, 20)}, []cgRow{{"waiting", 0, 20, Owner}}},
		{"mixed uid and cgroup owners", []Socket{cgSock(9003, 500, 20), cgSock(9003, 999, 12), cgSock(9003, 999, 20), cgSock(9003, 999, 0)},
			[]cgRow{{"mixed", 999, 0, Squatter}, {"mixed", 999, 20, Squatter}, {"mixed", 500, 20, Owner}, {"mixed", 999, 12, Owner}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testTree.Annotate(tc.socks)
			got := []cgRow{}
			for _, f := range Classify(cgPolicy, tc.socks).Findings {
				got = append(got, cgRow{f.Reservation, f.UID, f.CgroupID, f.Verdict})
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("findings (-want +got):\n%s", diff)
			}
		})
	}
}

// The kernel matches an owner's id exactly even when the socket's cgroup
// is gone from the tree (a socket keeps its cgroup alive); so does
// Classify, without ancestry.
func TestClassifyCgroupExactIDWithoutTree(t *testing.T) {
	got := Classify(cgPolicy, []Socket{cgSock(9000, 999, 11), cgSock(9000, 999, 12)})
	want := []cgRow{{"nginx", 999, 12, Squatter}, {"nginx", 999, 11, Owner}}
	var rows []cgRow
	for _, f := range got.Findings {
		rows = append(rows, cgRow{f.Reservation, f.UID, f.CgroupID, f.Verdict})
	}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("findings (-want +got):\n%s", diff)
	}
}

func TestClassifyCarriesCgroup(t *testing.T) {
	socks := []Socket{cgSock(9000, 999, 12), cgSock(9001, 999, 99), cgSock(9002, 999, 1)}
	testTree.Annotate(socks)
	var got [][3]string
	for _, f := range Classify(cgPolicy, socks).Findings {
		got = append(got, [3]string{strconv.FormatUint(f.CgroupID, 10), f.CgroupPath, f.Unit})
	}
	want := [][3]string{ // squatters (slice, waiting) first, then nginx's owner
		{"99", "", ""}, // unknown: removed since
		{"1", "/", ""},
		{"12", "/system.slice/nginx.service/workers", "nginx.service"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("cgroups of the findings (-want +got):\n%s", diff)
	}
}

func TestCgroupsAncestry(t *testing.T) {
	for id, want := range map[uint64][]uint64{
		1:  {1},
		10: {1, 10},
		12: {1, 10, 11, 12},
		20: {1, 20},
		99: nil,
		0:  nil,
	} {
		if diff := cmp.Diff(want, testTree.Ancestry(id)); diff != "" {
			t.Errorf("Ancestry(%d) (-want +got):\n%s", id, diff)
		}
	}
	// A subtree (a cgroup namespace's) has no "/" entry above its top.
	sub := NewCgroups(map[uint64]string{5: "/a", 6: "/a/b"})
	if diff := cmp.Diff([]uint64{5, 6}, sub.Ancestry(6)); diff != "" {
		t.Errorf("subtree Ancestry (-want +got):\n%s", diff)
	}
}

func TestUnitOf(t *testing.T) {
	for path, want := range map[string]string{
		"/":                                   "",
		"":                                    "",
		"/system.slice":                       "system.slice",
		"/system.slice/nginx.service":         "nginx.service",
		"/system.slice/nginx.service/workers": "nginx.service",
		"/system.slice/docker-0123abcd.scope": "docker-0123abcd.scope",
		"/system.slice/sshd.socket":           "sshd.socket",
		"/system.slice/var-lib.mount":         "var-lib.mount",
		"/system.slice/dev-sda2.swap":         "dev-sda2.swap",
		"/init.scope":                         "init.scope",
		"/user.slice/user-1000.slice":         "user-1000.slice",
		// The innermost unit that is not a slice.
		"/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox-1234.scope": "app-firefox-1234.scope",
		"/user.slice/user-1000.slice/user@1000.service/app.slice":                        "user@1000.service",
		"/machine.slice/systemd-nspawn@c1.service/payload/system.slice/foo.service":      "foo.service",
		"/pfw-test-1.2-abcd":        "",
		"/pfw-test-1.2-abcd/child":  "",
		"/weird/.service":           "", // a bare suffix names no unit
		"/kubepods.slice/pod1/ctr1": "kubepods.slice",
	} {
		if got := UnitOf(path); got != want {
			t.Errorf("UnitOf(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestFindingCgroup(t *testing.T) {
	f := Finding{Reservation: "sip", Protocol: model.UDP, Address: netip.MustParseAddr("0.0.0.0"), Port: 5060, UID: 1000,
		Processes: []Process{{PID: 123, Command: "squat"}}, Verdict: Squatter,
		CgroupID: 7, CgroupPath: "/x.slice/y.service", Unit: "y.service"}
	for _, tc := range []struct {
		path, unit string
		want       string
	}{
		{"/x.slice/y.service", "y.service", "udp 0.0.0.0:5060 uid 1000, cgroup /x.slice/y.service (unit y.service), reservation sip, held by 123 squat"},
		{"/pfw-test", "", "udp 0.0.0.0:5060 uid 1000, cgroup /pfw-test, reservation sip, held by 123 squat"},
		{"", "", "udp 0.0.0.0:5060 uid 1000, cgroup id 7 (removed), reservation sip, held by 123 squat"},
	} {
		f.CgroupPath, f.Unit = tc.path, tc.unit
		if got := f.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}
