package testenv

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Cgroup is a cgroup v2 directory created for one test and removed by its
// cleanup. A bind guard attached to it covers only the processes put into
// it (peers started with ServeConfig.Cgroup, DialConfig.Cgroup, or any
// command through its FD), never the host's.
type Cgroup struct {
	// Path is the cgroup as the hierarchy names it ("/pfw-test-..."), the
	// form portfw's --bind-guard-cgroup and owner.cgroups take.
	Path string
	// Dir is its directory in this process's mount of the hierarchy.
	Dir string
	// FD is the directory open, for exec.Cmd's SysProcAttr.CgroupFD.
	FD int
}

// CgroupRoot is the mount point of the cgroup v2 hierarchy's root in this
// process's mount namespace (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
// a hybrid host).
func CgroupRoot(t testing.TB) string {
	t.Helper()
	RequireNetNS(t)
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, x := range fields {
			if x == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" {
				var st syscall.Stat_t
				if syscall.Stat(fields[4], &st) == nil && st.Ino == 1 {
					return fields[4]
				}
			}
		}
	}
	t.Fatal("no mount of the cgroup v2 hierarchy's root in /proc/self/mountinfo")
	return ""
}

// NewCgroup creates a cgroup below parent ("" for the root), removed once
// the test's processes in it are gone.
func NewCgroup(t testing.TB, parent *Cgroup) *Cgroup {
	t.Helper()
	return newCgroup(t, parent, "")
}

// NewSlice creates, below the root, a cgroup named like a systemd slice
// ("pfw-test-...-HEX.slice"), where the tree walk looks for units.
func NewSlice(t testing.TB) *Cgroup {
	t.Helper()
	return newCgroup(t, nil, ".slice")
}

func newCgroup(t testing.TB, parent *Cgroup, suffix string) *Cgroup {
	t.Helper()
	dir, path := CgroupRoot(t), ""
	if parent != nil {
		dir, path = parent.Dir, parent.Path
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := fmt.Sprintf("%s%s-%s%s", cgPrefix, owner(os.Getpid()), hex.EncodeToString(b), suffix)
	c := &Cgroup{Path: path + "/" + name, Dir: filepath.Join(dir, name)}
	if err := os.Mkdir(c.Dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	fd, err := syscall.Open(c.Dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	c.FD = fd
	t.Cleanup(func() {
		syscall.Close(fd)
		// The processes have exited (their cleanups ran first), but the
		// kernel may take a moment to let go of the cgroup. Removing it
		// also detaches every program attached to it.
		for i := 0; ; i++ {
			err := os.Remove(c.Dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if i == 100 {
				t.Errorf("remove cgroup %s: %v", c.Dir, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return c
}

// Join moves the process pid into the cgroup.
func (c *Cgroup) Join(t testing.TB, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(c.Dir, "cgroup.procs"), []byte(fmt.Sprint(pid)), 0); err != nil {
		t.Fatalf("move pid %d into cgroup %s: %v", pid, c.Path, err)
	}
}

const cgPrefix = "pfw-test-"

// removeStaleCgroups removes cgroups that test binaries which died without
// their cleanups left behind (empty ones only: rmdir fails on a busy one).
func removeStaleCgroups() {
	root := ""
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, x := range fields {
			if x == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" {
				var st syscall.Stat_t
				if syscall.Stat(fields[4], &st) == nil && st.Ino == 1 {
					root = fields[4]
				}
			}
		}
	}
	f.Close()
	if root == "" {
		return
	}
	entries, _ := os.ReadDir(root)
	self := owner(os.Getpid())
	pidns, _, _ := strings.Cut(self, ".")
	for _, e := range entries {
		creator, _, ok := strings.Cut(strings.TrimPrefix(e.Name(), cgPrefix), "-")
		ns, pidText, ok2 := strings.Cut(creator, ".")
		if !strings.HasPrefix(e.Name(), cgPrefix) || !ok || !ok2 || ns != pidns {
			continue
		}
		var pid int
		if _, err := fmt.Sscan(pidText, &pid); err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.Remove(filepath.Join(root, e.Name()))
		}
	}
}

// LockRealRoot serialises the tests that attach the bind guard to the real
// root of the cgroup v2 hierarchy (in any test binary of this tree, which
// go test runs side by side), since they count the programs there.
func LockRealRoot(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/run/portfw-tests-real-root.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
}
