package bindguard

import (
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/testenv"
)

// ownerCgroup is the model's Cgroup for a test cgroup, as resolve makes
// it: the kernel's id is the directory's inode, the level is the number of
// components of its path.
func ownerCgroup(t *testing.T, c *testenv.Cgroup) model.Cgroup {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(c.Dir, &st); err != nil {
		t.Fatal(err)
	}
	level := strings.Count(strings.Trim(c.Path, "/"), "/") + 1
	if level > model.MaxCgroupLevel {
		t.Fatalf("cgroup %s is at level %d, deeper than an owner may be", c.Path, level)
	}
	return model.Cgroup{Source: c.Path, Path: c.Path, Level: uint8(level), ID: st.Ino}
}

// cgroupOwnerPolicy reserves 80 and 8080 (TCP and UDP) for cgroup owner
// alone, 8082 for a unit that is not running, and 8083 for uid or owner;
// root is no owner.
func cgroupOwnerPolicy(owner model.Cgroup, uid uint32) *model.Resolved {
	tcpUDP := []model.Protocol{model.TCP, model.UDP}
	cg := []model.Cgroup{owner}
	return &model.Resolved{Reservations: []model.Reservation{
		{Name: "cgroup", Protocols: tcpUDP, Ports: []model.PortRange{model.Port(80), model.Port(8080)}, Owners: model.Owners{Cgroups: cg}},
		{Name: "waiting", Protocols: tcpUDP, Ports: []model.PortRange{model.Port(8082)},
			Owners: model.Owners{Cgroups: []model.Cgroup{{Source: "pfw-not-running.service", Unit: true}}}},
		{Name: "either", Protocols: tcpUDP, Ports: []model.PortRange{model.Port(8083)},
			Owners: model.Owners{UIDs: []model.IDRange{model.ID(uid)}, Cgroups: cg}},
	}}
}

// TestGuardCgroupOwner: a reservation owned by a cgroup lets any uid in
// that cgroup or below it bind (its low port too, with no capability and
// the threshold at 1024), and nobody in its parent or in a sibling; a
// cgroup that does not exist owns nothing; with a uid beside the cgroup,
// either passes. The guard sits on the owner's parent, as it sits on the
// root on a host.
func TestGuardCgroupOwner(t *testing.T) {
	requireGuard(t)
	parent := testenv.NewCgroup(t, nil)
	owner := testenv.NewCgroup(t, parent)
	child := testenv.NewCgroup(t, owner)
	sibling := testenv.NewCgroup(t, parent)
	ns := testenv.NewNS(t)
	nobody := testenv.User(t, "pfw-squat")   // owns nothing
	uidOwner := testenv.User(t, "pfw-owner") // owns 8083 by uid
	cg := ownerCgroup(t, owner)
	if cg.Level != 2 {
		t.Fatalf("owner cgroup %s at level %d, want 2", owner.Path, cg.Level)
	}

	// The control: without the guard these binds succeed, or fail only for
	// the threshold, so what follows is the guard's doing.
	checkBinds(t, "before the guard, in the sibling", ns.Path, sibling, nobody,
		bindCase{"tcp4 0.0.0.0 8080", "ok"}, bindCase{"udp6 :: 8080", "ok"}, bindCase{"tcp4 0.0.0.0 8082", "ok"})
	checkBinds(t, "before the guard, in the owner cgroup", ns.Path, owner, nobody,
		bindCase{"tcp4 0.0.0.0 80", "EACCES"}, bindCase{"udp6 :: 80", "EACCES"})

	guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{cgroupOwnerPolicy(cg, uidOwner.UID)}, Cgroup: parent.Path})

	mine := []bindCase{
		{"tcp4 0.0.0.0 80", "ok"}, // below the threshold: the guard grants it
		{"tcp6 :: 80", "ok"},
		{"udp4 0.0.0.0 80", "ok"},
		{"udp6 :: 80", "ok"},
		{"tcp4 127.0.0.1 8080", "ok"},
		{"tcp6 ::1 8080", "ok"},
		{"udp4 0.0.0.0 8080", "ok"},
		{"udp6 ::ffff:127.0.0.1 8080", "ok"},
		{"mptcp4 0.0.0.0 8080", "ok"},
		{"tcp4 0.0.0.0 8083", "ok"},
		{"udp6 :: 8083", "ok"},
		{"tcp4 0.0.0.0 443", "EACCES"}, // the threshold still holds elsewhere
		{"tcp4 0.0.0.0 8082", "EPERM"}, // the waiting unit's: nobody's
		{"udp6 :: 8082", "EPERM"},
	}
	checkBinds(t, "a uid in the owner cgroup", ns.Path, owner, nobody, mine...)
	checkBinds(t, "a uid in a child of the owner cgroup", ns.Path, child, nobody, mine...)
	theirs := []bindCase{
		{"tcp4 0.0.0.0 80", "EPERM"},
		{"tcp6 :: 80", "EPERM"},
		{"udp4 0.0.0.0 80", "EPERM"},
		{"udp6 :: 80", "EPERM"},
		{"tcp4 0.0.0.0 8080", "EPERM"},
		{"tcp6 ::1 8080", "EPERM"},
		{"udp4 127.0.0.1 8080", "EPERM"},
		{"udp6 :: 8080", "EPERM"},
		{"tcp4 0.0.0.0 8083", "EPERM"},
		{"udp6 :: 8083", "EPERM"},
		{"tcp4 0.0.0.0 8082", "EPERM"},
		{"tcp4 0.0.0.0 9999", "ok"}, // not reserved
	}
	checkBinds(t, "a uid in the owner's parent", ns.Path, parent, nobody, theirs...)
	checkBinds(t, "a uid in the owner's sibling", ns.Path, sibling, nobody, theirs...)
	checkBinds(t, "root in the owner's sibling", ns.Path, sibling, testenv.Root,
		bindCase{"tcp4 0.0.0.0 8080", "EPERM"}, bindCase{"udp6 :: 80", "EPERM"}, bindCase{"tcp4 0.0.0.0 8082", "EPERM"})
	checkBinds(t, "the owner uid in the sibling", ns.Path, sibling, uidOwner,
		bindCase{"tcp4 0.0.0.0 8083", "ok"}, bindCase{"udp6 :: 8083", "ok"}, bindCase{"tcp4 0.0.0.0 8080", "EPERM"})
	checkBinds(t, "the owner uid in the owner cgroup", ns.Path, owner, uidOwner,
		bindCase{"tcp4 0.0.0.0 8083", "ok"}, bindCase{"tcp4 0.0.0.0 8080", "ok"})

	// A unit that starts: its cgroup appears and the next apply (a daemon's,
	// writing only what changed) makes it an owner; when it stops, it owns
	// nothing again.
	late := testenv.NewCgroup(t, parent)
	waiting := cgroupOwnerPolicy(cg, uidOwner.UID)
	started := cgroupOwnerPolicy(cg, uidOwner.UID)
	started.Reservations[1].Owners.Cgroups = []model.Cgroup{ownerCgroup(t, late)}
	started.Reservations[1].Owners.Cgroups[0].Source = "pfw-not-running.service"
	rep := guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{waiting, started}, Cgroup: parent.Path})
	if rep.Incremental != 1 {
		t.Errorf("%d applies wrote only the change, want 1", rep.Incremental)
	}
	checkBinds(t, "a uid in the started unit's cgroup", ns.Path, late, nobody, bindCase{"tcp4 0.0.0.0 8082", "ok"}, bindCase{"tcp4 0.0.0.0 8080", "EPERM"})
	checkBinds(t, "a uid in the owner cgroup, unit started", ns.Path, owner, nobody, bindCase{"tcp4 0.0.0.0 8082", "EPERM"})
	guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{started, waiting}, Cgroup: parent.Path})
	checkBinds(t, "a uid in the stopped unit's cgroup", ns.Path, late, nobody, bindCase{"tcp4 0.0.0.0 8082", "EPERM"})

	guardOp(t, ns.Path, guardRequest{Op: "remove", Cgroup: parent.Path})
	checkBinds(t, "after remove, in the sibling", ns.Path, sibling, nobody, bindCase{"tcp4 0.0.0.0 8080", "ok"})
}

// TestGuardCgroupOwnerFromRoot: with the guard on the root of the
// hierarchy, as on a host, a task in the root cgroup (level 0, which has
// no ancestor at level 1) and one in the test's own cgroup, whatever it
// is, are not owners of a cgroup's port; the owner cgroup's task is.
func TestGuardCgroupOwnerFromRoot(t *testing.T) {
	requireGuard(t)
	testenv.LockRealRoot(t)
	owner := testenv.NewCgroup(t, nil)
	child := testenv.NewCgroup(t, owner)
	ns := testenv.NewNS(t)
	nobody := testenv.User(t, "pfw-squat")
	rootDir := testenv.CgroupRoot(t)
	fd, err := syscall.Open(rootDir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	root := &testenv.Cgroup{Path: "/", Dir: rootDir, FD: fd}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(self), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			t.Logf("the test runs in cgroup %s", path)
		}
	}

	checkBinds(t, "before the guard, in the root cgroup", ns.Path, root, nobody, bindCase{"tcp4 0.0.0.0 8080", "ok"})
	cg := ownerCgroup(t, owner)
	// Registered first, so it runs after every other cleanup of the test
	// but the namespace's: the programs leave the root with the entry.
	t.Cleanup(func() { guardOp(t, ns.Path, guardRequest{Op: "remove", Cgroup: ""}) })
	guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{cgroupOwnerPolicy(cg, 0)}, Cgroup: ""})
	notMine := []bindCase{{"tcp4 0.0.0.0 8080", "EPERM"}, {"udp6 :: 80", "EPERM"}, {"tcp6 :: 8080", "EPERM"}}
	checkBinds(t, "a uid in the root cgroup", ns.Path, root, nobody, notMine...)
	checkBinds(t, "a uid in the test's own cgroup", ns.Path, nil, nobody, notMine...)
	checkBinds(t, "root in the root cgroup", ns.Path, root, testenv.Root, bindCase{"tcp4 0.0.0.0 8080", "EPERM"})
	mine := []bindCase{{"tcp4 0.0.0.0 80", "ok"}, {"udp6 :: 80", "ok"}, {"tcp6 :: 8080", "ok"}, {"udp4 0.0.0.0 8080", "ok"}}
	checkBinds(t, "a uid in the owner cgroup", ns.Path, owner, nobody, mine...)
	checkBinds(t, "a uid in a child of the owner cgroup", ns.Path, child, nobody, mine...)
	if rep := guardOp(t, ns.Path, guardRequest{Op: "remove", Cgroup: ""}); !rep.Found {
		t.Error("remove found no entry for the namespace")
	}
	checkBinds(t, "after remove, in the root cgroup", ns.Path, root, nobody, bindCase{"tcp4 0.0.0.0 8080", "ok"})
}

// TestGuardCgroupOwnerDeep: an owner at the deepest level an owner may be
// (model.MaxCgroupLevel) is found by the last step of the program's walk,
// for its own tasks and for those of a cgroup deeper still; its parent is
// no owner.
func TestGuardCgroupOwnerDeep(t *testing.T) {
	requireGuard(t)
	top := testenv.NewCgroup(t, nil)
	chain := []*testenv.Cgroup{top}
	for len(chain) < model.MaxCgroupLevel+1 {
		chain = append(chain, testenv.NewCgroup(t, chain[len(chain)-1]))
	}
	deepest, below, above := chain[model.MaxCgroupLevel-1], chain[model.MaxCgroupLevel], chain[model.MaxCgroupLevel-2]
	cg := ownerCgroup(t, deepest)
	if cg.Level != model.MaxCgroupLevel {
		t.Fatalf("owner cgroup at level %d, want %d", cg.Level, model.MaxCgroupLevel)
	}
	ns := testenv.NewNS(t)
	nobody := testenv.User(t, "pfw-squat")
	guardOp(t, ns.Path, guardRequest{Op: "apply", Policies: []*model.Resolved{cgroupOwnerPolicy(cg, 0)}, Cgroup: top.Path})
	mine := []bindCase{{"tcp4 0.0.0.0 80", "ok"}, {"udp6 :: 8080", "ok"}}
	checkBinds(t, "a uid in the owner cgroup", ns.Path, deepest, nobody, mine...)
	checkBinds(t, "a uid below the owner cgroup, deeper than any owner", ns.Path, below, nobody, mine...)
	checkBinds(t, "a uid in the owner's parent", ns.Path, above, nobody, bindCase{"tcp4 0.0.0.0 80", "EPERM"}, bindCase{"udp6 :: 8080", "EPERM"})
	checkBinds(t, "a uid at the top", ns.Path, top, nobody, bindCase{"tcp4 0.0.0.0 8080", "EPERM"})
}
