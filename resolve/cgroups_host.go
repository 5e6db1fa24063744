package resolve

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/bindguard"
	"github.com/portfw/portfw/model"
)

// HostCgroups resolves cgroups in the host's cgroup v2 hierarchy, reached
// the way the bind guard reaches it (bindguard.OpenRoot: under
// `ip netns exec` and in containers too), and units through systemd's D-Bus
// API where systemd runs, else by their cgroups in the tree (the layout
// systemd makes: a unit's cgroup is a directory named after the unit,
// below slices).
type HostCgroups struct {
	// Units, when set, resolves units instead (tests, or a caller that
	// holds a D-Bus connection).
	Units Units
	// From says where units are found: "systemd" (its D-Bus API; an
	// error when the bus cannot be reached), "cgroups" (the tree), or ""
	// for systemd where it runs (SystemdRunning) and the bus answers, the
	// tree elsewhere.
	From string

	once    sync.Once
	root    *os.File
	err     error
	busOnce sync.Once
	busErr  error
}

// units is where units are found: Units, set at first use from From.
func (h *HostCgroups) units() (Units, error) {
	h.busOnce.Do(func() {
		if h.From != "" && h.From != "systemd" && h.From != "cgroups" {
			h.busErr = fmt.Errorf("PORTFW_UNITS_FROM=%q: want systemd (its D-Bus API) or cgroups (the cgroup tree)", h.From)
			return
		}
		if h.Units != nil || h.From == "cgroups" || (h.From == "" && !SystemdRunning()) {
			return
		}
		u, err := NewSystemdUnits(context.Background())
		switch {
		case err == nil:
			h.Units = u
		case h.From == "systemd":
			h.busErr = err
		}
		// Otherwise systemd runs but its bus is not reachable here (a
		// container without the bus socket): its units' cgroups are in
		// the tree all the same.
	})
	return h.Units, h.busErr
}

// CgroupOwners makes System a cgroupSource: it opens the hierarchy on
// first use, so that policies without such owners never touch it.
func (s *System) CgroupOwners() (Cgroups, error) {
	if s.Cgroups == nil {
		return nil, errors.New("no cgroup hierarchy configured")
	}
	return s.Cgroups.open()
}

func (h *HostCgroups) open() (Cgroups, error) {
	h.once.Do(func() {
		h.root, h.err = bindguard.OpenRoot()
		if h.err != nil {
			h.err = fmt.Errorf("open the cgroup v2 hierarchy: %w", h.err)
		}
	})
	if h.err != nil {
		return nil, h.err
	}
	return h, nil
}

// RootFD is the open root of the hierarchy (for watching it), or -1.
func (h *HostCgroups) RootFD() int {
	if _, err := h.open(); err != nil {
		return -1
	}
	return int(h.root.Fd())
}

// LookupCgroup stats the cgroup's directory: on cgroup v2 its inode number
// is the cgroup's id.
func (h *HostCgroups) LookupCgroup(p string) (uint64, error) {
	if _, err := h.open(); err != nil {
		return 0, err
	}
	var st unix.Stat_t
	err := unix.Fstatat(int(h.root.Fd()), "."+p, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
		return 0, fmt.Errorf("cgroup %s: %w", p, ErrUnknown)
	case err != nil:
		return 0, fmt.Errorf("cgroup %s: %w", p, err)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return 0, fmt.Errorf("cgroup %s: %w", p, ErrUnknown)
	}
	return st.Ino, nil
}

// UnitCgroups finds units through Units when set, else in the tree.
func (h *HostCgroups) UnitCgroups(pattern string) ([]UnitCgroup, error) {
	u, err := h.units()
	if err != nil {
		return nil, err
	}
	if u != nil {
		return u.UnitCgroups(pattern)
	}
	return h.Fresh().UnitCgroups(pattern)
}

// Fresh returns a view that walks the tree at most once, for one
// resolution.
func (h *HostCgroups) Fresh() Cgroups {
	if u, err := h.units(); u != nil || err != nil {
		return h
	}
	return &treeView{h: h}
}

type treeView struct {
	h     *HostCgroups
	units []UnitCgroup // every unit cgroup in the tree, by name
	err   error
	done  bool
}

func (v *treeView) LookupCgroup(p string) (uint64, error) { return v.h.LookupCgroup(p) }

func (v *treeView) UnitCgroups(pattern string) ([]UnitCgroup, error) {
	if !v.done {
		v.done = true
		if _, err := v.h.open(); err != nil {
			v.err = err
		} else {
			v.units, v.err = unitTree(v.h.root)
		}
	}
	if v.err != nil {
		return nil, v.err
	}
	var out []UnitCgroup
	for _, u := range v.units {
		if matchUnit(pattern, u.Unit) {
			out = append(out, u)
		}
	}
	return out, nil
}

// unitTree lists the unit cgroups of the tree below root: directories
// named like units, reached from the root through slices only (systemd's
// layout: /system.slice/nginx.service, /user.slice/user-1000.slice), so
// that what a container's or a user's own manager runs below a service or
// scope is not taken for the host's units.
func unitTree(root *os.File) ([]UnitCgroup, error) {
	var out []UnitCgroup
	visit := func(p string, _ uint64) {
		if name := path.Base(p); p != "/" && model.UnitType(name) != "" {
			out = append(out, UnitCgroup{Unit: name, Path: p})
		}
	}
	if err := bindguard.WalkCgroups(root, model.SliceTree, visit); err != nil {
		return nil, fmt.Errorf("read the cgroup tree: %w", err)
	}
	slices.SortFunc(out, func(a, b UnitCgroup) int { return strings.Compare(a.Unit, b.Unit) })
	return out, nil
}
