package bindguard

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/cilium/ebpf/link"

	"github.com/portfw/portfw/internal/netns"
	"github.com/portfw/portfw/internal/parallel"
	"github.com/portfw/portfw/model"
)

// Namespace is the guard as one network namespace uses it: the host's
// programs, this namespace's entries. It opens the cgroup on first use.
type Namespace struct {
	cgroup        string
	cookie, inode uint64

	once sync.Once
	host *Host
	err  error

	// What this Namespace last wrote, for the next Apply to change only
	// what differs: the maps as written, and the Builder that knows them
	// (made from last when first needed: a one-shot apply never does).
	w     *written
	b     *Builder
	built struct {
		r    *model.Resolved
		spec Spec
	}
	incremental int // applies that wrote only what changed (for tests)
	// counts are the ports and scopes the last Apply wrote, when it wrote
	// the whole spec (nil after an incremental one, and after Remove).
	counts *[2]int
}

// ForNamespace is the guard of the calling thread's network namespace, on
// cgroup (relative to the root of the cgroup v2 hierarchy; "" for the root,
// which covers every process).
func ForNamespace(cgroup string) (*Namespace, error) {
	cookie, err := netns.Cookie()
	if err != nil {
		return nil, err
	}
	inode, err := netns.Inode()
	if err != nil {
		return nil, err
	}
	return &Namespace{cgroup: cgroup, cookie: cookie, inode: inode}, nil
}

func (n *Namespace) open() (*Host, error) {
	n.once.Do(func() { n.host, n.err = OpenHost(n.cgroup) })
	return n.host, n.err
}

// Supported says whether the guard can run here (see Supported), on the
// cgroup asked for.
func (n *Namespace) Supported() error {
	if err := Supported(); err != nil {
		return err
	}
	if _, err := n.open(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotSupported, err)
	}
	return nil
}

// Apply makes the guard enforce policy r in this namespace. After its
// first Apply it writes only the entries that change, as long as the maps
// are still the ones it wrote (the daemon, which holds the namespace's lock
// for life: nobody else writes them). It also takes away a guard an older
// portfw pinned for the namespace in bpffs.
func (n *Namespace) Apply(r *model.Resolved) error {
	h, err := n.open()
	if err != nil {
		return err
	}
	n.counts = nil
	if n.w != nil {
		if n.b == nil {
			n.b = NewBuilder(n.built.r, n.built.spec, n.w.num)
			n.built.r = nil
		}
		if put, del, ok := n.b.Update(r); ok {
			done, err := h.applyDelta(n.cookie, n.w, put, del)
			if done || err != nil {
				if err != nil {
					n.w, n.b = nil, nil
				} else {
					n.incremental++
				}
				return err
			}
		}
	}
	n.w, n.b = nil, nil
	// The spec (20-30 ms at 10k reservations) is worked out while apply
	// reads what the kernel holds.
	spec := parallel.Go(func() Spec { return FromResolved(r) })
	bound := entryBounds(r)
	w, err := h.apply(n.cookie, n.inode, spec, &bound)
	if err != nil {
		return err
	}
	n.w = &w
	n.built.r, n.built.spec = r, spec()
	n.counts = &[2]int{len(n.built.spec.Ports), len(n.built.spec.Scopes)}
	return removeLegacy(n.cookie)
}

// Remove takes this namespace's entries out (and the programs with the
// last namespace). It reports whether there were any.
func (n *Namespace) Remove() (bool, error) {
	n.w, n.b, n.counts = nil, nil, nil
	h, err := n.open()
	if err != nil {
		return false, err
	}
	found, err := h.Remove(n.cookie)
	if err != nil {
		return found, err
	}
	return found, removeLegacy(n.cookie)
}

// Status reports the guard and this namespace's part of it.
func (n *Namespace) Status() (Info, error) {
	h, err := n.open()
	if err != nil {
		return Info{}, err
	}
	return h.Status(n.cookie)
}

// Applied is Status after this Namespace's Apply wrote the whole spec:
// the programs, the namespaces and this one's entry as the kernel holds
// them, the entries counted from the spec written instead of read back
// (20k at 10k reservations, ~15 ms). Without such an Apply it is Status.
func (n *Namespace) Applied() (Info, error) {
	h, err := n.open()
	if err != nil {
		return Info{}, err
	}
	return h.status(n.cookie, n.counts)
}

// Active reports whether this namespace has a policy in the guard.
func (n *Namespace) Active() (bool, error) {
	h, err := n.open()
	if err != nil {
		return false, err
	}
	return h.Active(n.cookie)
}

// Sweep removes the entries of namespaces that no longer exist.
func (n *Namespace) Sweep() ([]uint64, error) {
	h, err := n.open()
	if err != nil {
		return nil, err
	}
	var l netns.Liveness
	return h.Sweep(func(cookie, inode uint64) (bool, error) {
		if cookie == n.cookie {
			return true, nil
		}
		return l.Alive(cookie, inode)
	})
}

// Cgroup is the cgroup the guard attaches to.
func (n *Namespace) Cgroup() string {
	if h, err := n.open(); err == nil {
		return h.Cgroup()
	}
	return n.cgroup
}

// legacyDir is where portfw 0.1 pinned a guard per namespace, one program
// per namespace (since replaced: a cgroup holds at most 64).
var legacyDir = "/sys/fs/bpf/portfw"

// removeLegacy detaches and unpins the namespace's guard of portfw 0.1, if
// bpffs shows one.
func removeLegacy(cookie uint64) error {
	dir := filepath.Join(legacyDir, strconv.FormatUint(cookie, 10))
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	var errs []error
	for _, name := range []string{"link_bind4", "link_bind6"} {
		l, err := link.LoadPinnedLink(filepath.Join(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
			errs = append(errs, err)
		}
		l.Close()
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove the pinned guard of portfw 0.1 in %s: %w", dir, err)
	}
	return nil
}

// Fake is an in-memory guard for tests of code above this package.
type Fake struct {
	mu sync.Mutex
	// Unsupported, when set, is what Supported returns.
	Unsupported error
	// FailApply, when set, makes the next Apply fail with it.
	FailApply error
	spec      *Spec
	// Applies and Removes count calls that changed something.
	Applies, Removes int
	// Dead are the cookies of deleted namespaces whose entries the next
	// Sweep removes.
	Dead []uint64
	// Probes counts calls of Supported.
	Probes int
}

// Supported returns Unsupported.
func (f *Fake) Supported() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Probes++
	return f.Unsupported
}

// Apply records the spec of r.
func (f *Fake) Apply(r *model.Resolved) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.FailApply; err != nil {
		f.FailApply = nil
		return err
	}
	spec := FromResolved(r)
	f.spec = &spec
	f.Applies++
	return nil
}

// Remove forgets the spec.
func (f *Fake) Remove() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	had := f.spec != nil
	if had {
		f.Removes++
	}
	f.spec = nil
	return had, nil
}

// Status reports whether a spec is held.
func (f *Fake) Status() (Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.spec == nil {
		return Info{Cgroup: "/"}, nil
	}
	return Info{Attached: true, Active: true, Cgroup: "/", Namespaces: 1, Ports: len(f.spec.Ports), Scopes: len(f.spec.Scopes)}, nil
}

// Applied is Status.
func (f *Fake) Applied() (Info, error) { return f.Status() }

// Active reports whether a spec is held.
func (f *Fake) Active() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.spec != nil, nil
}

// Sweep removes Dead.
func (f *Fake) Sweep() ([]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	swept := f.Dead
	f.Dead = nil
	return swept, nil
}

// Cgroup is the root.
func (f *Fake) Cgroup() string { return "/" }

// Spec returns what the fake enforces, or nil.
func (f *Fake) Spec() *Spec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.spec
}
