package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/testenv"
)

// guardPrograms lists portfw's bind programs attached to the cgroup open at
// fd, by family.
func guardPrograms(t *testing.T, fd int) map[int]int {
	t.Helper()
	out := map[int]int{}
	for fam, attach := range map[int]ebpf.AttachType{4: ebpf.AttachCGroupInet4Bind, 6: ebpf.AttachCGroupInet6Bind} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: fd, Attach: attach})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				continue
			}
			if info, err := prog.Info(); err == nil && strings.HasPrefix(info.Name, "portfw") {
				out[fam]++
			}
			prog.Close()
		}
	}
	return out
}

func requireGuardE2E(t *testing.T) {
	t.Helper()
	testenv.RequireNetNS(t)
	if err := bindguard.Supported(); err != nil {
		if os.Getenv(testenv.RequireEnv) == "1" {
			t.Fatalf("the bind guard cannot run here: %v (%s=1)", err, testenv.RequireEnv)
		}
		t.Skipf("the bind guard cannot run here: %v", err)
	}
}

const guardPolicy = `version: 1
settings: { bind_guard: on }
reservations:
  - name: web
    ports: [80]
    protocols: [tcp]
    owner: { users: [%[1]d] }
  - name: app
    ports: [8080]
    owner: { users: [%[1]d] }
`

// TestGuardOnTheRealRoot: by default the guard attaches to the root of the
// cgroup v2 hierarchy, found from inside `ip netns exec` (which hides the
// host's cgroup2 mount), so every process on the host is covered; the last
// remove detaches it.
func TestGuardOnTheRealRoot(t *testing.T) {
	requireGuardE2E(t)
	w := setup(t, "")
	root := cgroupRootMount()
	fd, err := syscall.Open(root, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	before := guardPrograms(t, fd)
	env := []string{envGuardCgroup + "="}
	path := writePolicy(t, fmt.Sprintf(guardPolicy, w.owner.UID))
	t.Cleanup(func() { portfwEnv(t, viaIPNetnsExec, w.Server, env, "remove") })
	out, errOut, code := portfwEnv(t, viaIPNetnsExec, w.Server, env, "apply", "-f", path)
	if code != 0 || !strings.Contains(out, "bind guard: on for cgroup /,") {
		t.Fatalf("apply under ip netns exec: exit %d\n%s%s", code, out, errOut)
	}
	if got := guardPrograms(t, fd); got[4] != 1 || got[6] != 1 {
		t.Errorf("portfw programs on the hierarchy's root: %v, want one bind4 and one bind6", got)
	}
	// A process in the root cgroup, outside the tests' own.
	rootCg := &testenv.Cgroup{Dir: root}
	for _, tc := range []struct {
		proto testenv.Proto
		port  uint16
		as    testenv.Cred
		want  string
	}{{testenv.TCP, 8080, w.squat, "EPERM"}, {testenv.UDP, 8080, w.squat, "EPERM"}, {testenv.TCP, 80, w.owner, "ok"}, {testenv.TCP, 8080, w.owner, "ok"}} {
		if got := w.Server.TryBind(t, tc.proto, any6(tc.port), tc.as, rootCg); got != tc.want {
			t.Errorf("%s/%d as uid %d from the root cgroup: %s, want %s", tc.proto, tc.port, tc.as.UID, got, tc.want)
		}
	}
	st, _, _ := portfwEnv(t, viaNsenter, w.Server, env, "status", "-f", path, "--json")
	if !strings.Contains(st, `"cgroup": "/"`) || !strings.Contains(st, `"active": true`) {
		t.Errorf("status:\n%s", st)
	}
	mustPortfwVia(t, viaIPNetnsExec, w.Server, "remove") // env does not matter to remove's table, it does to the guard:
	if out, errOut, code := portfwEnv(t, viaIPNetnsExec, w.Server, env, "remove"); code != 0 {
		t.Fatalf("remove: %d %s%s", code, out, errOut)
	}
	if got := w.Server.TryBind(t, testenv.TCP, any6(8080), w.squat, rootCg); got != "ok" {
		t.Errorf("after remove a squatter's bind: %s, want ok", got)
	}
	if got := guardPrograms(t, fd); got[4] != before[4] || got[6] != before[6] {
		t.Errorf("portfw programs on the root after the last remove: %v, were %v before", got, before)
	}
}

// TestGuardInCgroupNamespace: inside a cgroup namespace (a container), a
// cgroup2 mount shows only the namespace's subtree. portfw reaches the
// hierarchy's root through PID 1's cgroup namespace when it can see PID 1
// of the host; where it cannot (a PID namespace of its own), it never
// guards the subtree silently: on refuses, auto runs without the guard and
// says why.
func TestGuardInCgroupNamespace(t *testing.T) {
	requireGuardE2E(t)
	w := setup(t, "")
	cg := testenv.NewCgroup(t, nil)
	mount := cgroupRootMount()
	policy := func(mode string) string {
		return writePolicy(t, strings.Replace(fmt.Sprintf(guardPolicy, w.owner.UID), "bind_guard: on", "bind_guard: "+mode, 1))
	}
	// run starts portfw in cg, in a new cgroup namespace (and, with pidns,
	// a new PID namespace), with the host's cgroup2 mount hidden.
	run := func(pidns bool, args ...string) (string, int) {
		t.Helper()
		unshare := []string{"unshare", "--cgroup", "--mount", "--propagation", "private"}
		if pidns {
			unshare = append(unshare, "--pid", "--fork", "--mount-proc")
		}
		script := "umount -l " + mount + " && exec ip netns exec " + w.Server.Name + " " + portfwBin(t) + " " + strings.Join(args, " ")
		cmd := exec.Command(unshare[0], append(unshare[1:], "sh", "-c", script)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.FD}
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	t.Cleanup(func() { portfw(t, w.Server, "remove") })

	out, code := run(true, "apply", "-f", policy("on"))
	if code != 1 || !strings.Contains(out, "cgroup namespace") || !strings.Contains(out, "hostPath volume of /sys/fs/cgroup") {
		t.Errorf("bind_guard: on from a cgroup namespace without the host's PID 1: exit %d\n%s", code, out)
	}
	if got := w.Server.Run(t, "nft", "list", "tables"); got != "" {
		t.Errorf("a refused apply changed the kernel: %s", got)
	}
	out, code = run(true, "apply", "-f", policy("auto"))
	if code != 0 || !strings.Contains(out, "bind guard off:") || !strings.Contains(out, "bind guard OFF") {
		t.Errorf("bind_guard: auto from a cgroup namespace without the host's PID 1: exit %d\n%s", code, out)
	}
	// Seeing the host's PID 1, it joins PID 1's cgroup namespace and
	// reaches the root: the guard covers processes outside cg.
	out, code = run(false, "apply", "-f", policy("on"))
	if code != 0 || !strings.Contains(out, "bind guard: on for cgroup "+guardCgroup) {
		t.Fatalf("bind_guard: on from a cgroup namespace with the host's PID 1: exit %d\n%s", code, out)
	}
	if got := w.Server.TryBind(t, testenv.TCP, any6(8080), w.squat); got != "EPERM" {
		t.Errorf("a squatter outside the container's cgroup: %s, want EPERM", got)
	}
}

// TestGuardSeveralNamespaces: portfw applied in three namespaces on one
// cgroup installs one bind4 and one bind6 program; each namespace enforces
// its own policy; a deleted namespace's entries are swept by the next
// apply anywhere; the last remove detaches the programs.
func TestGuardSeveralNamespaces(t *testing.T) {
	requireGuardE2E(t)
	t.Parallel()
	cg := testenv.NewCgroup(t, nil)
	env := []string{envGuardCgroup + "=" + cg.Path}
	owner, worker, squat := testenv.User(t, "pfw-owner"), testenv.User(t, "pfw-worker"), testenv.User(t, "pfw-squat")
	spaces := []*testenv.NS{testenv.NewNS(t), testenv.NewNS(t), testenv.NewNS(t)}
	owners := []testenv.Cred{owner, worker, owner}
	for i, ns := range spaces {
		path := writePolicy(t, fmt.Sprintf(guardPolicy, owners[i].UID))
		if out, errOut, code := portfwEnv(t, vias[i%2], ns, env, "apply", "-f", path); code != 0 {
			t.Fatalf("apply in namespace %d: %d %s%s", i, code, out, errOut)
		}
	}
	if got := guardPrograms(t, cg.FD); got[4] != 1 || got[6] != 1 {
		t.Fatalf("programs after applying in three namespaces: %v, want one of each", got)
	}
	for i, ns := range spaces[:2] {
		other := owners[1-i]
		if got := ns.TryBind(t, testenv.TCP, any6(8080), owners[i], cg); got != "ok" {
			t.Errorf("namespace %d: its owner's bind: %s", i, got)
		}
		if got := ns.TryBind(t, testenv.UDP, any6(8080), other, cg); got != "EPERM" {
			t.Errorf("namespace %d: the other namespace's owner's bind: %s, want EPERM", i, got)
		}
		if got := ns.TryBind(t, testenv.TCP, any6(8080), squat, cg); got != "EPERM" {
			t.Errorf("namespace %d: a squatter's bind: %s, want EPERM", i, got)
		}
	}
	spaces[2].Delete(t)
	path := writePolicy(t, fmt.Sprintf(guardPolicy, owner.UID))
	out, _, _ := portfwEnv(t, viaNsenter, spaces[0], env, "apply", "-f", path, "--json")
	if !strings.Contains(out, `"namespaces": 2`) {
		t.Errorf("after a namespace was deleted, apply's guard does not show 2 namespaces:\n%s", out)
	}
	for _, ns := range spaces[:2] {
		if out, errOut, code := portfwEnv(t, viaNsenter, ns, env, "remove"); code != 0 {
			t.Fatalf("remove: %d %s%s", code, out, errOut)
		}
	}
	if got := guardPrograms(t, cg.FD); got[4] != 0 || got[6] != 0 {
		t.Errorf("programs after the last remove: %v, want none", got)
	}
}
