// Command bindguard measures what the bind guard adds to bind(): 10,000
// reservations (one port each, TCP and UDP, each its own owner uid) guarded
// by the shared eBPF program, against the same binds with no guard, side by
// side in one run; first with the policy in one network namespace, then
// with the same policy in 100 (one program serves them all, its maps keyed
// by namespace cookie). It also times the guard's apply: the first one, an
// in-place update of the same policy, and an update that changes one port.
// Run as root:
//
//	go run ./bench/bindguard [-n 200000] [-rounds 5] [-reservations 10000] [-namespaces 100] [-o FILE]
//
// The results are a Markdown section (on stdout, or in FILE for
// bench/run.sh to put into docs/performance.md).
//
// It makes throwaway network namespaces and a cgroup, applies the guard to
// that cgroup, and runs each bind loop in a child process (this binary
// again) that joins the namespace, drops to the uid under test on its own
// locked thread, and times each bind() alone (socket() and close() are not
// timed). "no guard" children run outside the cgroup; "guard" ones inside.
// Rounds alternate the two, and the median round is reported.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/internal/netns"
	"github.com/portfw/portfw/model"
)

const workerEnv = "PORTFW_BENCH_WORKER"

func main() {
	if os.Getenv(workerEnv) != "" {
		runtime.LockOSThread()
		if err := worker(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		return
	}
	n := flag.Int("n", 200000, "binds per measurement")
	rounds := flag.Int("rounds", 5, "rounds per case (alternating guard and no guard)")
	reservations := flag.Int("reservations", 10000, "reservations in the policy")
	namespaces := flag.Int("namespaces", 100, "namespaces holding the policy in the second part")
	outPath := flag.String("o", "", "write the Markdown results to this file instead of stdout")
	flag.Parse()
	var out bytes.Buffer
	err := run(&out, *n, *rounds, *reservations, *namespaces)
	if err == nil && *outPath != "" {
		err = os.WriteFile(*outPath, out.Bytes(), 0o644)
	} else {
		os.Stdout.Write(out.Bytes())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

const (
	firstPort = 20000
	firstUID  = 100000
	freePort  = 40000 // reserved by nobody
)

func run(w io.Writer, n, rounds, count, namespaces int) error {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	if err := bindguard.Supported(); err != nil {
		return err
	}
	name := fmt.Sprintf("pfw-bench-%d", os.Getpid())
	var created []string
	mkns := func(ns string) error {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			return fmt.Errorf("add netns: %v: %s", err, out)
		}
		created = append(created, ns)
		return exec.Command("ip", "-n", ns, "link", "set", "lo", "up").Run()
	}
	defer func() {
		for _, ns := range created {
			exec.Command("ip", "netns", "del", ns).Run()
		}
	}()
	if err := mkns(name); err != nil {
		return err
	}
	nsPath := "/run/netns/" + name
	other := name + "-other"
	if err := mkns(other); err != nil {
		return err
	}

	root, err := bindguard.OpenRoot()
	if err != nil {
		return err
	}
	defer root.Close()
	if err := unix.Mkdirat(int(root.Fd()), name, 0o755); err != nil {
		return fmt.Errorf("create cgroup: %w", err)
	}
	defer unix.Unlinkat(int(root.Fd()), name, unix.AT_REMOVEDIR)
	cg, err := unix.Openat(int(root.Fd()), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open cgroup: %w", err)
	}
	defer unix.Close(cg)
	host, err := bindguard.OpenHost("/" + name)
	if err != nil {
		return err
	}
	defer host.Close()

	policy := func(shift int) bindguard.Spec {
		r := &model.Resolved{}
		for i := range count {
			r.Reservations = append(r.Reservations, model.Reservation{
				Name:      fmt.Sprintf("r%05d", i),
				Protocols: []model.Protocol{model.TCP, model.UDP},
				Ports:     []model.PortRange{model.Port(uint16(firstPort + i + shift*min(i/(count-1), 1)))},
				Owners:    model.Owners{Root: true, UIDs: []model.IDRange{model.ID(uint32(firstUID + i))}},
			})
		}
		return bindguard.FromResolved(r)
	}
	spec := policy(0)
	apply := func(path string, s bindguard.Spec) (time.Duration, error) {
		var took time.Duration
		err := inNS(path, func() error {
			cookie, err := netns.Cookie()
			if err != nil {
				return err
			}
			inode, err := netns.Inode()
			if err != nil {
				return err
			}
			t0 := time.Now()
			err = host.Apply(cookie, inode, s)
			took = time.Since(t0)
			return err
		})
		return took, err
	}
	first, err := apply(nsPath, spec)
	if err != nil {
		return err
	}
	defer inNS(nsPath, func() error { c, _ := netns.Cookie(); _, err := host.Remove(c); return err })
	same, err := apply(nsPath, spec)
	if err != nil {
		return err
	}
	onePort, err := apply(nsPath, policy(1)) // the last reservation moves one port up
	if err != nil {
		return err
	}
	if _, err := apply(nsPath, spec); err != nil {
		return err
	}

	var u unix.Utsname
	unix.Uname(&u)
	p("%d reservations (one port each, TCP and UDP, each its own owner uid: %d port keys, %d owner sets), kernel %s, %d CPUs; "+
		"%d binds per measurement, median of %d rounds alternating guard and no guard (`go run ./bench/bindguard -n %d -rounds %d`).\n\n",
		count, len(spec.Ports), len(spec.Owners), unix.ByteSliceToString(u.Release[:]), runtime.NumCPU(), n, rounds, n, rounds)
	p("| guard apply (%d reservations) | time |\n|---|---:|\n", count)
	p("| first (program and maps created) | %v |\n| in place, same policy | %v |\n| in place, one port changed | %v |\n",
		first.Round(time.Millisecond), same.Round(time.Millisecond), onePort.Round(time.Millisecond))

	table := func(title string) error {
		p("\n%s: ns per `bind()`\n\n| case | no guard | guard | ratio |\n|---|---:|---:|---:|\n", title)
		owner := strconv.Itoa(firstUID + count/2)
		port := strconv.Itoa(firstPort + count/2)
		cases := []struct {
			name, uid, port, proto string
			outsideNS              bool // both run in another namespace: the guard's cookie check alone
			want                   string
		}{
			{"unreserved port", owner, strconv.Itoa(freePort), "tcp4", false, "ok"},
			{"reserved port, owner", owner, port, "tcp4", false, "ok"},
			{"reserved port, other uid (the guard refuses: EPERM)", "99999", port, "tcp4", false, "EPERM"},
			{"reserved port, owner, udp", owner, port, "udp4", false, "ok"},
			{"unguarded namespace (cookie check only)", "99999", port, "tcp4", true, "ok"},
		}
		for _, c := range cases {
			var without, with []float64
			ns := nsPath
			if c.outsideNS {
				ns = "/run/netns/" + other
			}
			for range rounds {
				a, err := measure(ns, -1, c.uid, c.proto, c.port, n, "ok")
				if err != nil {
					return fmt.Errorf("%s, no guard: %w", c.name, err)
				}
				b, err := measure(ns, cg, c.uid, c.proto, c.port, n, c.want)
				if err != nil {
					return fmt.Errorf("%s, guard: %w", c.name, err)
				}
				without, with = append(without, a), append(with, b)
			}
			a, b := median(without), median(with)
			p("| %s | %.0f | %.0f | %.2f x |\n", c.name, a, b, b/a)
		}
		return nil
	}
	if err := table("Policy in 1 namespace"); err != nil {
		return err
	}
	var more []time.Duration
	for i := 1; i < namespaces; i++ {
		ns := fmt.Sprintf("%s-%d", name, i)
		if err := mkns(ns); err != nil {
			return err
		}
		d, err := apply("/run/netns/"+ns, spec)
		if err != nil {
			return err
		}
		more = append(more, d)
		defer inNS("/run/netns/"+ns, func() error { c, _ := netns.Cookie(); _, err := host.Remove(c); return err })
	}
	if len(more) > 0 {
		ds := make([]float64, len(more))
		for i, d := range more {
			ds[i] = float64(d)
		}
		progs := 0
		for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Bind, ebpf.AttachCGroupInet6Bind} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: cg, Attach: at})
			if err != nil {
				return err
			}
			progs += len(res.Programs)
		}
		p("\nThe same policy applied in %d more namespaces: median %v each; programs attached to the cgroup (bind4 and bind6) after all %d: %d.\n",
			len(more), time.Duration(median(ds)).Round(time.Millisecond), namespaces, progs)
		if err := table(fmt.Sprintf("Policy in %d namespaces", namespaces)); err != nil {
			return err
		}
	}
	return nil
}

func median(xs []float64) float64 {
	slices.Sort(xs)
	return xs[len(xs)/2]
}

// measure runs one worker and returns its ns per bind.
func measure(nsPath string, cgroup int, uid, proto, port string, n int, want string) (float64, error) {
	cmd := exec.Command("/proc/self/exe", nsPath, uid, proto, port, strconv.Itoa(n), want)
	cmd.Env = append(os.Environ(), workerEnv+"=1")
	if cgroup >= 0 {
		cmd.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: cgroup}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("%v: %s", err, strings.TrimSpace(errb.String()))
	}
	return strconv.ParseFloat(strings.TrimSpace(out.String()), 64)
}

// worker: NSPATH UID PROTO PORT N WANT. It joins the namespace and drops
// to UID on this (locked) thread only, and exits when done.
func worker(args []string) error {
	if len(args) != 6 {
		return fmt.Errorf("usage: NSPATH UID PROTO PORT N WANT")
	}
	uid, _ := strconv.Atoi(args[1])
	port, _ := strconv.Atoi(args[3])
	n, _ := strconv.Atoi(args[4])
	fd, err := unix.Open(args[0], unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("join netns: %w", err)
	}
	for _, call := range [][4]uintptr{
		{unix.SYS_SETGROUPS, 0, 0, 0},
		{unix.SYS_SETRESGID, uintptr(uid), uintptr(uid), uintptr(uid)},
		{unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)},
	} {
		if _, _, e := unix.RawSyscall(call[0], call[1], call[2], call[3]); e != 0 {
			return fmt.Errorf("drop privileges: %w", e)
		}
	}
	typ := unix.SOCK_STREAM
	if args[2] == "udp4" {
		typ = unix.SOCK_DGRAM
	}
	sa := &unix.SockaddrInet4{Port: port}
	var total time.Duration
	for i := -n / 10; i < n; i++ { // the first tenth warms up
		s, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		t0 := time.Now()
		err = unix.Bind(s, sa)
		d := time.Since(t0)
		unix.Close(s)
		got := "ok"
		if err != nil {
			got = unix.ErrnoName(err.(unix.Errno))
		}
		if got != args[5] {
			return fmt.Errorf("bind %s port %d as uid %d: %s, want %s", args[2], port, uid, got, args[5])
		}
		if i >= 0 {
			total += d
		}
	}
	fmt.Println(float64(total.Nanoseconds()) / float64(n))
	return nil
}

// inNS runs fn on a thread in the namespace at path; the thread returns to
// the scheduler only after it is back in its own namespace.
func inNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("join netns: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("return to own netns: %w", err) // the thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
