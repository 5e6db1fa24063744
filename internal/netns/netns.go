// Package netns identifies network namespaces. They are told apart by
// cookie: bpf_get_netns_cookie returns it for a socket, SO_NETNS_COOKIE for
// the namespace of a socket, and a cookie is never reused while the system
// runs (nsfs inodes are). Liveness finds which namespaces still exist, for
// sweeping the bind guard's entries of deleted ones.
package netns

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Cookie is the cookie of the calling thread's network namespace. A
// goroutine that switched namespaces must be locked to its thread.
func Cookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("read netns cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("read netns cookie (SO_NETNS_COOKIE, kernel 5.14): %w", err)
	}
	return c, nil
}

// Inode is the nsfs inode of the calling thread's network namespace.
func Inode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("identify network namespace: %w", err)
	}
	return st.Ino, nil
}

// nsGetID is NS_GET_ID (_IOR(0xb7, 0xd, __u64)): the namespace's 64-bit
// id, which for a network namespace is its cookie (measured, 6.18).
const nsGetID = 0x8008b70d

// CookieOf returns the cookie of the network namespace open at path: with
// NS_GET_ID where the kernel has it, else by entering the namespace on a
// thread of its own and asking a socket.
func CookieOf(path string) (uint64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var id uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nsGetID, uintptr(unsafePointer(&id))); e == 0 {
		return id, nil
	}
	type result struct {
		c   uint64
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{0, err}
			return // the thread dies locked
		}
		defer unix.Close(orig)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{0, err}
			return
		}
		c, err := Cookie()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread() // back home: the thread may be reused
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// initPIDNS is PROC_PID_INIT_INO, the inode of the initial PID namespace.
const initPIDNS = 0xEFFFFFFC

// ErrPartialView says why a sweep cannot tell dead namespaces from live
// ones.
var ErrPartialView = errors.New("not in the initial PID namespace: this process cannot see every process, so it cannot tell which network namespaces are gone")

// liveNamespaces finds the network namespaces alive on the host, as inode
// -> a path that opens one. A namespace lives while a task is in it, a file
// holds it (an open descriptor, a bind mount such as /run/netns/NAME) or
// one of its sockets is open. The first kind is found through every
// process's and thread's ns/net, the second through every process's
// descriptors and every mount namespace's mounts. Namespaces kept alive only
// by sockets are not found: a sweep may drop their guard, and their
// nftables table stays (see docs/layers.md). deep includes threads,
// descriptors and mounts; without it only processes are looked at.
func liveNamespaces(deep bool) (map[uint64]string, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		return nil, fmt.Errorf("identify PID namespace: %w", err)
	}
	if st.Ino != initPIDNS {
		return nil, ErrPartialView
	}
	live := map[uint64]string{}
	add := func(path string) {
		var s unix.Stat_t
		if unix.Stat(path, &s) == nil {
			if _, ok := live[s.Ino]; !ok {
				live[s.Ino] = path
			}
		}
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	mntNS := map[uint64]string{}
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		dir := "/proc/" + p.Name()
		add(dir + "/ns/net")
		if !deep {
			continue
		}
		if tasks, err := os.ReadDir(dir + "/task"); err == nil && len(tasks) > 1 {
			for _, t := range tasks {
				add(dir + "/task/" + t.Name() + "/ns/net")
			}
		}
		if fds, err := os.ReadDir(dir + "/fd"); err == nil {
			for _, fd := range fds {
				link, err := os.Readlink(dir + "/fd/" + fd.Name())
				if err == nil && strings.HasPrefix(link, "net:[") {
					add(dir + "/fd/" + fd.Name())
				}
			}
		}
		var m unix.Stat_t
		if unix.Stat(dir+"/ns/mnt", &m) == nil {
			if _, ok := mntNS[m.Ino]; !ok {
				mntNS[m.Ino] = dir
			}
		}
	}
	for _, dir := range mntNS {
		for _, point := range netMounts(dir + "/mountinfo") {
			add(filepath.Join(dir, "root", point))
		}
	}
	return live, nil
}

// netMounts lists the mount points of network namespace files in a
// mountinfo (ip netns add bind-mounts them at /run/netns/NAME).
func netMounts(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, x := range fields {
			if x == "-" && i+1 < len(fields) && fields[i+1] == "nsfs" && len(fields) > 4 && strings.HasPrefix(fields[3], "net:[") {
				out = append(out, unescapeMount(fields[4]))
			}
		}
	}
	return out
}

// Liveness tells whether namespaces recorded earlier (by cookie and inode)
// still exist. It looks at the host once, lazily, and cheaply first
// (processes only), deeper (threads, descriptors, mounts) only for a
// namespace not found that way. The zero value is ready to use.
type Liveness struct {
	cheap, deep map[uint64]string
	err         error
}

// Alive reports whether the namespace with this cookie, applied when its
// inode was inode, is alive. An error means it cannot be known: the caller
// keeps the entry.
func (l *Liveness) Alive(cookie, inode uint64) (bool, error) {
	if l.cheap == nil && l.err == nil {
		l.cheap, l.err = liveNamespaces(false)
	}
	if l.err != nil {
		return true, l.err
	}
	path, ok := l.cheap[inode]
	if !ok {
		if l.deep == nil {
			l.deep, l.err = liveNamespaces(true)
			if l.err != nil {
				return true, l.err
			}
		}
		if path, ok = l.deep[inode]; !ok {
			return false, nil
		}
	}
	// An inode is reused once its namespace is gone: only the cookie
	// says whether this is the same namespace.
	c, err := CookieOf(path)
	if err != nil {
		return true, err
	}
	return c == cookie, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
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
