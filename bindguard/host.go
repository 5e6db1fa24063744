package bindguard

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// BPFFS is where bpffs is (or gets) mounted; the guard pins under
// BPFFS/portfw/<netns cookie>/.
var BPFFS = "/sys/fs/bpf"

const hiddenHint = "; `ip netns exec` remounts /sys and hides them: enter the namespace with `nsenter --net=/run/netns/NAME portfw ...` instead"

type mount struct {
	root, point, fstype string
}

// mounts parses /proc/self/mountinfo.
func mounts() ([]mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
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

// CgroupRoot is the mount point of the cgroup v2 hierarchy: /sys/fs/cgroup
// on a unified host, /sys/fs/cgroup/unified on a hybrid one. A mount of
// the hierarchy's root is preferred over one of a subtree.
func CgroupRoot() (string, error) {
	ms, err := mounts()
	if err != nil {
		return "", err
	}
	return cgroupRoot(ms)
}

func cgroupRoot(ms []mount) (string, error) {
	found := ""
	for _, m := range ms {
		if m.fstype != "cgroup2" {
			continue
		}
		if m.root == "/" {
			return m.point, nil
		}
		if found == "" {
			found = m.point
		}
	}
	if found == "" {
		return "", errors.New("find cgroup v2: no cgroup2 file system is mounted" + hiddenHint)
	}
	return found, nil
}

// checkCgroup2 makes sure path is a directory of a cgroup v2 file system.
func checkCgroup2(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("open cgroup %s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("open cgroup %s: not a cgroup v2 directory", path)
	}
	return nil
}

// cgroupID is the id the kernel gives a cgroup v2 directory: its inode.
func cgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup: %w", err)
	}
	return st.Ino, nil
}

// cgroupPath finds the directory of a cgroup id under the cgroup v2 root,
// or returns "" when it is not there (removed, or outside this mount).
func cgroupPath(id uint64) string {
	root, err := CgroupRoot()
	if err != nil {
		return ""
	}
	found := ""
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if i, err := cgroupID(p); err == nil && i == id {
			found = p
			return fs.SkipAll
		}
		return nil
	})
	return found
}

// ensureBPFFS mounts bpffs at BPFFS unless it is mounted there already.
func ensureBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs(BPFFS, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(BPFFS, 0o700); err != nil {
		return fmt.Errorf("mount bpffs: %w", err)
	}
	if err := unix.Mount("bpf", BPFFS, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", BPFFS, err)
	}
	return nil
}

// bpffsAvailable reports whether bpffs is mounted at BPFFS or can be.
func bpffsAvailable() error {
	var st unix.Statfs_t
	if err := unix.Statfs(BPFFS, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return fmt.Errorf("read /proc/filesystems: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[len(f)-1] == "bpf" {
			return nil
		}
	}
	return errors.New("the kernel has no bpf file system (CONFIG_BPF_SYSCALL)")
}

// NetnsCookie is the cookie of the calling thread's network namespace, the
// number bpf_get_netns_cookie returns for its sockets. Cookies are never
// reused while the system runs. A goroutine that switched namespaces must be
// locked to its thread.
func NetnsCookie() (uint64, error) {
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

// pinDir is the pin directory of a namespace's guard.
func pinDir(cookie uint64) string {
	return filepath.Join(BPFFS, "portfw", strconv.FormatUint(cookie, 10))
}
