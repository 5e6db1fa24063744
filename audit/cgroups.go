package audit

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/model"
)

// Cgroups is a snapshot of the cgroup v2 tree: every cgroup's id (the
// inode of its directory, what sock_diag reports as a socket's cgroup and
// what an owner's model.Cgroup.ID holds) and its path from the root of the
// hierarchy. It is a value, so Classify stays pure: the host is read once
// per scan (ReadCgroups) and tests build one with NewCgroups.
//
// Ancestry comes from the paths: the ancestors of "/a/b/c" are the cgroups
// at "/a/b", "/a" and "/". A snapshot knows nothing of cgroups removed
// before it was taken, although the kernel keeps a removed cgroup alive
// while a socket made in it lives.
type Cgroups struct {
	paths map[uint64]string
	ids   map[string]uint64
}

// NewCgroups makes a snapshot from a map of cgroup ids to paths ("/" for
// the root, "/system.slice/nginx.service").
func NewCgroups(paths map[uint64]string) Cgroups {
	c := Cgroups{paths: make(map[uint64]string, len(paths)), ids: make(map[string]uint64, len(paths))}
	for id, p := range paths {
		c.paths[id] = p
		c.ids[p] = id
	}
	return c
}

// Len is the number of cgroups in the snapshot.
func (c Cgroups) Len() int { return len(c.paths) }

// Path returns the path of the cgroup with this id; false when the
// snapshot has no such cgroup (it was removed, or id is 0).
func (c Cgroups) Path(id uint64) (string, bool) {
	p, ok := c.paths[id]
	return p, ok
}

// Ancestry returns the ids of the cgroup id and of the cgroups above it,
// the topmost first and id last: the cgroups whose owners own a socket
// made in it. It is nil when the snapshot does not know id.
func (c Cgroups) Ancestry(id uint64) []uint64 {
	p, ok := c.paths[id]
	if !ok {
		return nil
	}
	var out []uint64
	if root, ok := c.ids["/"]; ok && p != "/" {
		out = append(out, root)
	}
	for i := 1; i < len(p); i++ {
		if p[i] == '/' {
			if a, ok := c.ids[p[:i]]; ok {
				out = append(out, a)
			}
		}
	}
	return append(out, id)
}

// Annotate fills in the cgroup path, the unit and the ancestry of each
// socket from its Cgroup id. A socket whose cgroup the snapshot does not
// know keeps its id alone.
func (c Cgroups) Annotate(socks []Socket) {
	for i := range socks {
		s := &socks[i]
		s.CgroupPath, s.Unit, s.CgroupAncestry = "", "", nil
		if p, ok := c.paths[s.Cgroup]; ok && s.Cgroup != 0 {
			s.CgroupPath, s.Unit, s.CgroupAncestry = p, UnitOf(p), c.Ancestry(s.Cgroup)
		}
	}
}

// UnitOf names the systemd unit a cgroup path belongs to: its innermost
// component that is a service, scope, socket, mount or swap unit
// ("/system.slice/nginx.service/workers" is nginx.service's), else its
// innermost slice ("/user.slice"), else "" (a cgroup systemd does not
// manage, or the root).
func UnitOf(path string) string {
	comps := strings.Split(strings.Trim(path, "/"), "/")
	slice := ""
	for i := len(comps) - 1; i >= 0; i-- {
		switch c := comps[i]; model.UnitType(c) {
		case "":
		case "slice":
			if slice == "" {
				slice = c
			}
		default:
			return c
		}
	}
	return slice
}

// treeRoot caches the open root of the hierarchy: finding it may take a
// private mount (under `ip netns exec`, which hides the host's), and a
// daemon auditing every minute should do that once.
var treeRoot struct {
	sync.Mutex
	f *os.File
}

// openTreeRoot opens the root of the cgroup v2 hierarchy the way the bind
// guard finds it. Where that root cannot be reached (a cgroup namespace
// without the host's hierarchy) it takes the cgroup2 mount at
// /sys/fs/cgroup, the namespace's subtree, whose paths are those
// /proc/self/cgroup shows there.
func openTreeRoot() (*os.File, error) {
	treeRoot.Lock()
	defer treeRoot.Unlock()
	if treeRoot.f != nil {
		return treeRoot.f, nil
	}
	f, err := bindguard.OpenRoot()
	if err != nil {
		var sfs unix.Statfs_t
		if unix.Statfs("/sys/fs/cgroup", &sfs) != nil || sfs.Type != unix.CGROUP2_SUPER_MAGIC {
			return nil, err
		}
		if f, err = os.Open("/sys/fs/cgroup"); err != nil {
			return nil, err
		}
	}
	treeRoot.f = f
	return f, nil
}

// ReadCgroups walks the cgroup v2 tree once. Cgroups that go away during
// the walk are left out; only an unreadable root is an error.
func ReadCgroups() (Cgroups, error) {
	root, err := openTreeRoot()
	if err != nil {
		return Cgroups{}, fmt.Errorf("read cgroups: %w", err)
	}
	paths := map[uint64]string{}
	err = bindguard.WalkCgroups(root, func(string) bool { return true }, func(p string, id uint64) { paths[id] = p })
	if err != nil {
		return Cgroups{}, fmt.Errorf("read cgroups: %w", err)
	}
	return NewCgroups(paths), nil
}
