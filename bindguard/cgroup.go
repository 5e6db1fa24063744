package bindguard

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The guard attaches to the root of the cgroup v2 hierarchy, so that it
// runs for every process on the host. That root must be reachable wherever
// portfw runs: `ip netns exec` remounts /sys (hiding the host's cgroup2
// mount), a systemd unit may not mount it, a container sees only its own
// subtree through a cgroup namespace. OpenCgroup finds it in this order:
//
//  1. a cgroup2 mount this process sees whose directory is the hierarchy's
//     root (inode 1): the host's /sys/fs/cgroup[/unified], or the host's
//     hierarchy mounted into a container;
//  2. a private cgroup2 mount, made on a thread of its own in a mount
//     namespace of its own (nobody else ever sees it), after joining the
//     initial cgroup namespace if ours is another and a process in it is
//     visible (a container with the host's PID namespace); the directory
//     stays open when the thread and its mount namespace go away.
//
// A mount whose root is not inode 1 is a cgroup namespace's subtree: the
// guard never attaches there silently.

// rootInode is the inode of the root of the cgroup v2 hierarchy.
const rootInode = 1

// errCgroupNS says why the root was not reached.
var errCgroupNS = errors.New("this process is in a cgroup namespace and the root of the cgroup v2 hierarchy is not reachable: " +
	"a guard attached here would cover only this namespace's subtree; mount the host's cgroup2 hierarchy into the container " +
	"(a hostPath volume of /sys/fs/cgroup) or share the host's cgroup namespace (e.g. podman --cgroupns=host)")

type mount struct {
	root, point, fstype string
}

// mounts parses a mountinfo file.
func mounts(path string) ([]mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

func parseMountinfo(r io.Reader) ([]mount, error) {
	var out []mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mount{root: unescape(fields[3]), point: unescape(fields[4]), fstype: fields[sep+1]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isCgroup2Root reports whether f is a cgroup v2 directory and whether it
// is the hierarchy's root.
func isCgroup2Root(f *os.File) (cgroup2, root bool) {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil || sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		return false, false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return true, false
	}
	return true, st.Ino == rootInode
}

// OpenRoot opens the root of the cgroup v2 hierarchy (see above).
func OpenRoot() (*os.File, error) {
	ms, err := mounts("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		if m.fstype != "cgroup2" {
			continue
		}
		f, err := os.Open(m.point)
		if err != nil {
			continue
		}
		if _, root := isCgroup2Root(f); root {
			return f, nil
		}
		f.Close()
	}
	f, err := privateMount()
	if err != nil {
		return nil, err
	}
	if cg2, root := isCgroup2Root(f); !cg2 || !root {
		f.Close()
		if !cg2 {
			return nil, errors.New("open cgroup v2: the private mount is not a cgroup2 file system")
		}
		return nil, errCgroupNS
	}
	return f, nil
}

// mountTargets are directories a private mount may cover: it lives in a
// mount namespace of one thread, so covering them hides nothing from
// anyone, and one of them exists on any Linux system, read-only root file
// systems included.
var mountTargets = []string{"/tmp", "/run", "/mnt", "/dev", "/proc"}

// privateMount mounts cgroup2 on a thread with a mount namespace of its own
// and returns the mount's root directory, open. The thread is never given
// back to the Go runtime: it exits with its namespaces.
func privateMount() (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	onDisposableThread(func() {
		f, err := func() (*os.File, error) {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return nil, fmt.Errorf("mount cgroup2 privately: unshare mount namespace: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return nil, fmt.Errorf("mount cgroup2 privately: make mounts private: %w", err)
			}
			joinInitCgroupNS()
			var lastErr error
			for _, dir := range mountTargets {
				if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
					continue
				}
				if err := unix.Mount("cgroup2", dir, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
					lastErr = err
					continue
				}
				f, err := os.Open(dir)
				if err != nil {
					return nil, fmt.Errorf("mount cgroup2 privately: open: %w", err)
				}
				return f, nil
			}
			return nil, fmt.Errorf("mount cgroup2 privately: %w", lastErr)
		}()
		ch <- result{f, err}
	})
	r := <-ch
	return r.f, r.err
}

// onDisposableThread runs f on an OS thread of its own that ends with it,
// taking whatever namespaces f joined along: never the process's main
// thread, which Go cannot end (it would stay in them, and /proc/self would
// show them).
func onDisposableThread(f func()) {
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if unix.Gettid() == unix.Getpid() {
			// The main thread. Locked, it cannot take the next goroutine,
			// which therefore starts on another thread.
			done := make(chan struct{})
			onDisposableThread(func() { f(); close(done) })
			<-done
			runtime.UnlockOSThread()
			return
		}
		f()
	}()
}

// initCgroupNS is PROC_CGROUP_INIT_INO, the inode of the initial cgroup
// namespace.
const initCgroupNS = 0xEFFFFFFB

// joinInitCgroupNS moves the calling thread into the initial cgroup
// namespace when it is in another one (a container that shares the host's
// PID namespace but has a cgroup namespace of its own): through PID 1's
// namespace file, or any visible process's that is in it. Failure is not an
// error here: the inode check decides.
func joinInitCgroupNS() {
	var self unix.Stat_t
	if unix.Stat("/proc/thread-self/ns/cgroup", &self) != nil || self.Ino == initCgroupNS {
		return
	}
	try := func(pid string) bool {
		path := "/proc/" + pid + "/ns/cgroup"
		var st unix.Stat_t
		if unix.Stat(path, &st) != nil || st.Ino != initCgroupNS {
			return false
		}
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return false
		}
		defer unix.Close(fd)
		return unix.Setns(fd, unix.CLONE_NEWCGROUP) == nil
	}
	if try("1") {
		return
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err == nil && try(e.Name()) {
			return
		}
	}
}

// OpenCgroup opens the cgroup the guard attaches to: the root of the
// hierarchy when path is "" or "/", else path relative to it (as
// /proc/self/cgroup writes it, "/portfw-test.slice/x").
func OpenCgroup(path string) (dir *os.File, name string, err error) {
	root, err := OpenRoot()
	if err != nil {
		return nil, "", err
	}
	rel := strings.Trim(filepath.Clean("/"+path), "/")
	if rel == "" {
		return root, "/", nil
	}
	defer root.Close()
	if strings.HasPrefix(rel, "..") {
		return nil, "", fmt.Errorf("open cgroup %s: not below the root of the hierarchy", path)
	}
	fd, err := unix.Openat(int(root.Fd()), rel, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("open cgroup %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), "/"+rel), "/" + rel, nil
}

// WalkCgroups walks the cgroup v2 tree from root, an open directory of it
// (OpenRoot's): visit sees each cgroup's path from root ("/" for root
// itself) and id (its directory's inode), and the walk goes below a cgroup
// only where descend says so. Cgroups removed during the walk are passed
// over; only an unreadable root is an error.
func WalkCgroups(root *os.File, descend func(path string) bool, visit func(path string, id uint64)) error {
	// A descriptor of its own: reading a directory moves its offset.
	fd, err := unix.Openat(int(root.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	return walkCgroups(fd, "/", descend, visit)
}

// walkCgroups visits the cgroup open at fd, which it closes, and those
// below it. Every directory of a cgroup2 file system is a cgroup.
func walkCgroups(fd int, path string, descend func(string) bool, visit func(string, uint64)) error {
	dir := os.NewFile(uintptr(fd), path)
	defer dir.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	visit(path, st.Ino)
	if !descend(path) {
		return nil
	}
	entries, err := dir.ReadDir(-1)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		child, err := unix.Openat(fd, e.Name(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != nil {
			continue // removed since the directory was read
		}
		p := path + "/" + e.Name()
		if path == "/" {
			p = "/" + e.Name()
		}
		_ = walkCgroups(child, p, descend, visit) // an error is a subtree removed during the walk
	}
	return nil
}
