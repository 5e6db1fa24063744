package audit

import (
	"net/netip"
	"os"
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
