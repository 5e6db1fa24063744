package main

import (
	"fmt"
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
		testenv.Require(t, "the bind guard cannot run here: "+err.Error())
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
	testenv.RequireNetNS(t)
	testenv.LockRealRoot(t)
	requireGuardE2E(t)
	w := setup(t, "")
	root := cgroupRootMount()
	fd, err := syscall.Open(root, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	env := []string{envGuardCgroup + "="}
	// Programs left attached for namespaces that are gone (a benchmark's,
	// deleted without remove) are swept by any remove: do one first, so
	// that "before" holds only what live namespaces use.
	portfwEnv(t, viaIPNetnsExec, w.Server, env, "remove")
	before := guardPrograms(t, fd)
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

// TestGuardInCgroupNamespace: inside a cgroup namespace (a container), the
// container's own cgroup2 mount shows only its subtree. portfw never guards
// the subtree silently. It reaches the hierarchy's root through a host
// cgroup2 mount bound into the container (the DaemonSet's hostPath volume)
// or through the cgroup namespace of a host process it can see (hostPID);
// with neither, on refuses and auto runs without the guard and says why.
func TestGuardInCgroupNamespace(t *testing.T) {
	requireGuardE2E(t)
	w := setup(t, "")
	cg := testenv.NewCgroup(t, nil)
	mount := cgroupRootMount()
	hostPath := t.TempDir()
	policy := func(mode string) string {
		return writePolicy(t, strings.Replace(fmt.Sprintf(guardPolicy, w.owner.UID), "bind_guard: on", "bind_guard: "+mode, 1))
	}
	// container runs portfw in cg, in a new cgroup and mount namespace (and,
	// with pidns, a new PID namespace), after prepare (shell commands) set
	// up its mounts; v enters the network namespace.
	container := func(pidns bool, prepare string, v via, args ...string) (string, int) {
		t.Helper()
		unshare := []string{"unshare", "--cgroup", "--mount", "--propagation", "private"}
		if pidns {
			unshare = append(unshare, "--pid", "--fork", "--mount-proc")
		}
		enter := "ip netns exec " + w.Server.Name
		if v == viaNsenter {
			enter = "nsenter --net=" + w.Server.Path + " --"
		}
		script := prepare + " && exec " + enter + " " + portfwBin(t) + " " + strings.Join(args, " ")
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
	// What a container runtime does: the container's cgroup2 mount is its
	// namespace's view, the container's subtree.
	ownView := "umount -l " + mount + " && mount -t cgroup2 none " + mount

	for _, v := range vias {
		out, code := container(true, ownView, v, "apply", "-f", policy("on"))
		if code != 1 || !strings.Contains(out, "cgroup namespace") || !strings.Contains(out, "hostPath volume of /sys/fs/cgroup") {
			t.Errorf("bind_guard: on in a container without the host's hierarchy (via %s): exit %d\n%s", v, code, out)
		}
		if got := w.Server.Run(t, "nft", "list", "tables"); got != "" {
			t.Errorf("a refused apply changed the kernel: %s", got)
		}
		out, code = container(true, ownView, v, "apply", "-f", policy("auto"))
		if code != 0 || !strings.Contains(out, "bind guard off:") || !strings.Contains(out, "bind guard OFF") {
			t.Errorf("bind_guard: auto in a container without the host's hierarchy (via %s): exit %d\n%s", v, code, out)
		}
		if got := w.Server.TryBind(t, testenv.TCP, any6(8080), w.squat); got != "ok" {
			t.Errorf("auto without the guard, yet a squatter's bind: %s", got)
		}
		mustPortfw(t, w.Server, "remove")
	}

	cases := []struct {
		name    string
		pidns   bool
		prepare string
	}{
		// The DaemonSet: the host's cgroup2 hierarchy bound in by hostPath.
		{"host mount bound in", true, "mount --bind " + mount + " " + hostPath + " && " + ownView},
		// hostPID: a host process's cgroup namespace leads to the root.
		{"host PID namespace", false, ownView},
	}
	for _, tc := range cases {
		for _, v := range vias {
			out, code := container(tc.pidns, tc.prepare, v, "apply", "-f", policy("on"))
			if code != 0 || !strings.Contains(out, "bind guard: on for cgroup "+guardCgroup) {
				t.Fatalf("%s (via %s): exit %d\n%s", tc.name, v, code, out)
			}
			// The guard covers processes outside the container's cgroup.
			if got := w.Server.TryBind(t, testenv.TCP, any6(8080), w.squat); got != "EPERM" {
				t.Errorf("%s (via %s): a squatter outside the container's cgroup: %s, want EPERM", tc.name, v, got)
			}
			out, code = container(tc.pidns, tc.prepare, v, "remove")
			if code != 0 {
				t.Fatalf("%s (via %s): remove: exit %d\n%s", tc.name, v, code, out)
			}
			if got := w.Server.TryBind(t, testenv.TCP, any6(8080), w.squat); got != "ok" {
				t.Errorf("%s (via %s): after remove from the container a squatter's bind: %s, want ok", tc.name, v, got)
			}
		}
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
