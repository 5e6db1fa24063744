package bindguard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ErrNotSupported is wrapped by Supported's errors: the host cannot run
// the guard, and `bind_guard: auto` carries on with nftables alone.
var ErrNotSupported = errors.New("bind guard not supported")

var mapNames = []string{mapConfig, mapPorts, mapScopes, mapOwners, mapRanges}

// Pin names of the two links; programs are not pinned, their links hold them.
var linkNames = map[int]string{4: "link_bind4", 6: "link_bind6"}

var families = []int{4, 6}

var support struct {
	once sync.Once
	err  error
}

// Supported returns nil when this host can run the guard, or an error
// wrapping ErrNotSupported that says why not: no cgroup v2 hierarchy, no
// bpffs, a kernel without SO_NETNS_COOKIE (5.14) or whose verifier refuses
// the program (bind hooks may grant low ports since 5.12), or no
// CAP_BPF/CAP_NET_ADMIN. It loads the real program once, attached nowhere,
// and remembers the answer.
func Supported() error {
	support.once.Do(func() { support.err = probe() })
	return support.err
}

func probe() error {
	notSupported := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrNotSupported, fmt.Sprintf(format, args...))
	}
	if _, err := CgroupRoot(); err != nil {
		return notSupported("%v", err)
	}
	if err := bpffsAvailable(); err != nil {
		return notSupported("%v", err)
	}
	if _, err := NetnsCookie(); err != nil {
		return notSupported("%v", err)
	}
	maps, err := newMaps(entries{})
	if err != nil {
		return notSupported("%s", loadProblem(err))
	}
	defer closeMaps(maps)
	for _, fam := range families {
		p, err := newProgram(fam, 0, maps)
		if err != nil {
			return notSupported("%s", loadProblem(err))
		}
		p.Close()
	}
	return nil
}

func loadProblem(err error) string {
	if errors.Is(err, unix.EPERM) || errors.Is(err, os.ErrPermission) {
		return fmt.Sprintf("%v (the guard needs root: CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)", err)
	}
	release := "unknown"
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		release = unix.ByteSliceToString(u.Release[:])
	}
	return fmt.Sprintf("kernel %s refuses the bind program (it needs 5.12 or later): %v", release, err)
}

// mapSpec sizes a map for n entries of one generation. In-place updates
// hold two generations at once; the headroom lets a policy grow before a
// full replace is needed. Maps allocate per entry (BPF_F_NO_PREALLOC), so
// an unused maximum costs little.
func mapSpec(name string, n int) *ebpf.MapSpec {
	entries := uint32(max(256, 4*n))
	switch name {
	case mapConfig:
		return &ebpf.MapSpec{Name: "pfw_" + name, Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1}
	case mapPorts:
		return &ebpf.MapSpec{Name: "pfw_" + name, Type: ebpf.Hash, KeySize: portsKeySize, ValueSize: portsValueSize,
			MaxEntries: min(entries, maxPortKeys), Flags: unix.BPF_F_NO_PREALLOC}
	case mapScopes:
		return &ebpf.MapSpec{Name: "pfw_" + name, Type: ebpf.LPMTrie, KeySize: scopesKeySize, ValueSize: 4,
			MaxEntries: entries, Flags: unix.BPF_F_NO_PREALLOC}
	case mapOwners:
		return &ebpf.MapSpec{Name: "pfw_" + name, Type: ebpf.Hash, KeySize: ownersKeySize, ValueSize: 4,
			MaxEntries: entries, Flags: unix.BPF_F_NO_PREALLOC}
	case mapRanges:
		return &ebpf.MapSpec{Name: "pfw_" + name, Type: ebpf.LPMTrie, KeySize: rangesKeySize, ValueSize: 4,
			MaxEntries: entries, Flags: unix.BPF_F_NO_PREALLOC}
	}
	panic("bindguard: unknown map " + name)
}

func (e entries) of(name string) []kv {
	switch name {
	case mapPorts:
		return e.ports
	case mapScopes:
		return e.scopes
	case mapOwners:
		return e.owners
	case mapRanges:
		return e.ranges
	}
	return nil
}

// newMaps creates the maps sized for e, filled with e, generation 0 active.
func newMaps(e entries) (map[string]*ebpf.Map, error) {
	maps := map[string]*ebpf.Map{}
	for _, name := range mapNames {
		m, err := ebpf.NewMap(mapSpec(name, len(e.of(name))))
		if err != nil {
			closeMaps(maps)
			return nil, fmt.Errorf("create map %s: %w", name, err)
		}
		maps[name] = m
		if err := put(m, name, e.of(name)); err != nil {
			closeMaps(maps)
			return nil, err
		}
	}
	if err := setConfig(maps[mapConfig], 0); err != nil {
		closeMaps(maps)
		return nil, err
	}
	return maps, nil
}

func closeMaps(maps map[string]*ebpf.Map) {
	for _, m := range maps {
		m.Close()
	}
}

func put(m *ebpf.Map, name string, kvs []kv) error {
	for _, e := range kvs {
		if err := m.Put(e.k, e.v); err != nil {
			return fmt.Errorf("update map %s: %w", name, err)
		}
	}
	return nil
}

func setConfig(m *ebpf.Map, gen uint32) error {
	v := binary.NativeEndian.AppendUint32(nil, gen)
	v = binary.NativeEndian.AppendUint32(v, layoutVersion)
	if err := m.Put(uint32(0), v); err != nil {
		return fmt.Errorf("update map config: %w", err)
	}
	return nil
}

// readConfig returns the active generation and the layout version.
func readConfig(m *ebpf.Map) (gen, layout uint32, err error) {
	v, err := m.LookupBytes(uint32(0))
	if err != nil || len(v) != 8 {
		return 0, 0, fmt.Errorf("read map config: %v", err)
	}
	return binary.NativeEndian.Uint32(v), binary.NativeEndian.Uint32(v[4:]), nil
}

func newProgram(family int, cookie uint64, maps map[string]*ebpf.Map) (*ebpf.Program, error) {
	spec := programSpec(family, cookie)
	for name, m := range maps {
		if err := spec.Instructions.AssociateMap(name, m); err != nil {
			return nil, fmt.Errorf("load bind%d program: %w", family, err)
		}
	}
	p, err := ebpf.NewProgram(spec)
	if err != nil {
		return nil, fmt.Errorf("load bind%d program: %w", family, err)
	}
	return p, nil
}

// guard is what is pinned for one network namespace; any part may be
// missing after a crash or an older portfw.
type guard struct {
	dir   string
	maps  map[string]*ebpf.Map
	links map[int]link.Link
}

func openGuard(dir string) (*guard, error) {
	g := &guard{dir: dir, maps: map[string]*ebpf.Map{}, links: map[int]link.Link{}}
	for _, name := range mapNames {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			g.close()
			return nil, fmt.Errorf("load pinned map %s: %w", name, err)
		}
		g.maps[name] = m
	}
	for fam, name := range linkNames {
		l, err := link.LoadPinnedLink(filepath.Join(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			g.close()
			return nil, fmt.Errorf("load pinned link %s: %w", name, err)
		}
		g.links[fam] = l
	}
	return g, nil
}

func (g *guard) close() {
	closeMaps(g.maps)
	for _, l := range g.links {
		l.Close()
	}
}

func (g *guard) empty() bool { return len(g.maps) == 0 && len(g.links) == 0 }

// linkCgroup returns the cgroup id a link is attached to.
func linkCgroup(l link.Link) (uint64, error) {
	info, err := l.Info()
	if err != nil {
		return 0, fmt.Errorf("read link info: %w", err)
	}
	cg := info.Cgroup()
	if cg == nil {
		return 0, errors.New("read link info: not a cgroup link")
	}
	return cg.CgroupId, nil
}

// intact reports whether the pinned guard is complete, of this layout,
// attached to the cgroup, and its programs use exactly the pinned maps,
// so that updating those maps updates what the kernel enforces. A crash
// in the middle of a replace leaves pins and programs apart; the next
// Apply then replaces everything again.
func (g *guard) intact(cgroup uint64) bool {
	if len(g.maps) != len(mapNames) || len(g.links) != len(families) {
		return false
	}
	if _, layout, err := readConfig(g.maps[mapConfig]); err != nil || layout != layoutVersion {
		return false
	}
	var pinned []ebpf.MapID
	for _, m := range g.maps {
		info, err := m.Info()
		if err != nil {
			return false
		}
		id, ok := info.ID()
		if !ok {
			return false
		}
		pinned = append(pinned, id)
	}
	slices.Sort(pinned)
	for _, l := range g.links {
		if id, err := linkCgroup(l); err != nil || id != cgroup {
			return false
		}
		info, err := l.Info()
		if err != nil {
			return false
		}
		p, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			return false
		}
		pinfo, err := p.Info()
		p.Close()
		if err != nil {
			return false
		}
		used, ok := pinfo.MapIDs()
		if !ok {
			return false
		}
		slices.Sort(used)
		if !slices.Equal(used, pinned) {
			return false
		}
	}
	return true
}

var errFull = errors.New("maps too small for an in-place update")

// update writes spec into the pinned maps as the inactive generation,
// switches to it with one write, then deletes the old generation. Leftovers
// of an update that crashed midway are deleted first.
func (g *guard) update(spec Spec) error {
	cur, _, err := readConfig(g.maps[mapConfig])
	if err != nil {
		return err
	}
	next := byte(1 - cur&1)
	e := encode(spec, next)
	old := map[string][][]byte{}
	for _, name := range mapNames[1:] {
		m := g.maps[name]
		keys, err := allKeys(m)
		if err != nil {
			return fmt.Errorf("read map %s: %w", name, err)
		}
		for _, k := range keys {
			if genOf(name, k) == byte(cur) {
				old[name] = append(old[name], k)
				continue
			}
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete from map %s: %w", name, err)
			}
		}
		if len(old[name])+len(e.of(name)) > int(m.MaxEntries()) {
			return errFull
		}
	}
	for _, name := range mapNames[1:] {
		if err := put(g.maps[name], name, e.of(name)); err != nil {
			return err
		}
	}
	if err := setConfig(g.maps[mapConfig], uint32(next)); err != nil {
		return err
	}
	for _, name := range mapNames[1:] {
		for _, k := range old[name] {
			if err := g.maps[name].Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete from map %s: %w", name, err)
			}
		}
	}
	return nil
}

func allKeys(m *ebpf.Map) ([][]byte, error) {
	var keys [][]byte
	var prev any
	for {
		k, err := m.NextKeyBytes(prev)
		if err != nil {
			return nil, err
		}
		if k == nil {
			return keys, nil
		}
		keys = append(keys, k)
		prev = k
	}
}

// replace builds new maps and programs for spec and swaps them in: a link
// already on the cgroup gets the new program atomically (BPF_LINK_UPDATE),
// otherwise a new link is attached and pinned over the old one, which is
// detached only then. New pins are made under temporary names and renamed
// over the old ones, so the directory always holds a whole guard.
func (g *guard) replace(spec Spec, cookie uint64, cgroupPath string, cgroup uint64) error {
	maps, err := newMaps(encode(spec, 0))
	if err != nil {
		return err
	}
	defer closeMaps(maps)
	progs := map[int]*ebpf.Program{}
	defer func() {
		for _, p := range progs {
			p.Close()
		}
	}()
	for _, fam := range families {
		p, err := newProgram(fam, cookie, maps)
		if err != nil {
			return err
		}
		progs[fam] = p
	}
	var renames [][2]string
	pinNew := func(name string, pin func(string) error) error {
		final := filepath.Join(g.dir, name)
		tmp := final + "_new" // bpffs refuses names with a dot
		if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale pin: %w", err)
		}
		if err := pin(tmp); err != nil {
			return fmt.Errorf("pin %s: %w", name, err)
		}
		renames = append(renames, [2]string{tmp, final})
		return nil
	}
	for _, name := range mapNames {
		if err := pinNew(name, maps[name].Pin); err != nil {
			return err
		}
	}
	var stale []link.Link
	for _, fam := range families {
		old := g.links[fam]
		if old != nil {
			if id, err := linkCgroup(old); err == nil && id == cgroup {
				if err := old.Update(progs[fam]); err != nil {
					return fmt.Errorf("update bind%d link: %w", fam, err)
				}
				continue
			}
			stale = append(stale, old)
		}
		cg, err := os.Open(cgroupPath)
		if err != nil {
			return fmt.Errorf("open cgroup: %w", err)
		}
		attach := ebpf.AttachCGroupInet4Bind
		if fam == 6 {
			attach = ebpf.AttachCGroupInet6Bind
		}
		l, err := link.AttachRawLink(link.RawLinkOptions{Target: int(cg.Fd()), Program: progs[fam], Attach: attach})
		cg.Close()
		if err != nil {
			return fmt.Errorf("attach bind%d program to %s: %w", fam, cgroupPath, err)
		}
		err = pinNew(linkNames[fam], l.Pin)
		l.Close() // the pin holds it
		if err != nil {
			return err
		}
	}
	for _, r := range renames {
		if err := os.Rename(r[0], r[1]); err != nil {
			return fmt.Errorf("pin: %w", err)
		}
	}
	for _, l := range stale {
		if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
			return fmt.Errorf("detach link from the previous cgroup: %w", err)
		}
	}
	return nil
}

// Apply makes the kernel enforce spec for binds in the calling thread's
// network namespace by processes in cgroupPath (a cgroup v2 directory, ""
// for the root of the hierarchy) and every cgroup below it.
//
// The first Apply mounts bpffs if needed, loads and attaches the bind4 and
// bind6 programs and pins them with their maps. A later one writes the new
// policy into the pinned maps beside the old one and switches over with a
// single write; it replaces maps and programs (atomically, through the
// links) only when the maps are too small, the layout changed, or the
// cgroup did.
func Apply(spec Spec, cgroupPath string) error {
	if cgroupPath == "" {
		root, err := CgroupRoot()
		if err != nil {
			return fmt.Errorf("apply bind guard: %w", err)
		}
		cgroupPath = root
	}
	if err := checkCgroup2(cgroupPath); err != nil {
		return fmt.Errorf("apply bind guard: %w", err)
	}
	cgroup, err := cgroupID(cgroupPath)
	if err != nil {
		return fmt.Errorf("apply bind guard: %w", err)
	}
	cookie, err := NetnsCookie()
	if err != nil {
		return fmt.Errorf("apply bind guard: %w", err)
	}
	if err := ensureBPFFS(); err != nil {
		return fmt.Errorf("apply bind guard: %w", err)
	}
	unlock, err := lockPins()
	if err != nil {
		return fmt.Errorf("apply bind guard: %w", err)
	}
	defer unlock()
	dir := pinDir(cookie)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("apply bind guard: create pin dir: %w", err)
	}
	g, err := openGuard(dir)
	if err != nil {
		return fmt.Errorf("apply bind guard: %w", err)
	}
	defer g.close()
	if g.intact(cgroup) {
		err := g.update(spec)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errFull) {
			return fmt.Errorf("apply bind guard: %w", err)
		}
	}
	if err := g.replace(spec, cookie, cgroupPath, cgroup); err != nil {
		return fmt.Errorf("apply bind guard: %w", err)
	}
	return nil
}

// Remove detaches and unpins the guard of the calling thread's network
// namespace. It reports whether there was one.
func Remove() (bool, error) {
	cookie, err := NetnsCookie()
	if err != nil {
		return false, fmt.Errorf("remove bind guard: %w", err)
	}
	dir := pinDir(cookie)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	unlock, err := lockPins()
	if err != nil {
		return false, fmt.Errorf("remove bind guard: %w", err)
	}
	defer unlock()
	g, err := openGuard(dir)
	if err != nil {
		return false, fmt.Errorf("remove bind guard: %w", err)
	}
	defer g.close()
	for _, l := range g.links {
		// Detach, not just unpin: someone else holding the link open
		// must not keep the guard alive.
		if err := l.Detach(); err != nil && !errors.Is(err, link.ErrNotSupported) {
			return true, fmt.Errorf("remove bind guard: detach: %w", err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return true, fmt.Errorf("remove bind guard: unpin: %w", err)
	}
	return true, nil
}

// Info is what Status finds for the calling thread's network namespace.
type Info struct {
	Installed bool   `json:"installed"`
	PinDir    string `json:"pin_dir,omitempty"`
	// Attached is true when both the bind4 and the bind6 program are
	// attached; Cgroup is their cgroup (empty if it is not under this
	// host's cgroup v2 mount).
	Attached bool   `json:"attached"`
	Cgroup   string `json:"cgroup,omitempty"`
	CgroupID uint64 `json:"cgroup_id,omitempty"`
	// Ports is the number of guarded (protocol, port) pairs and Scopes the
	// number of address-scoped entries.
	Ports  int `json:"ports"`
	Scopes int `json:"scopes"`
}

// Status reports the guard of the calling thread's network namespace.
// Installed is false, with no error, when there is none.
func Status() (Info, error) {
	cookie, err := NetnsCookie()
	if err != nil {
		return Info{}, fmt.Errorf("read bind guard: %w", err)
	}
	dir := pinDir(cookie)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return Info{}, nil
	}
	g, err := openGuard(dir)
	if err != nil {
		return Info{}, fmt.Errorf("read bind guard: %w", err)
	}
	defer g.close()
	if g.empty() {
		return Info{}, nil
	}
	info := Info{Installed: true, PinDir: dir, Attached: len(g.links) == len(families)}
	for _, l := range g.links {
		if id, err := linkCgroup(l); err == nil {
			info.CgroupID = id
		}
	}
	if info.CgroupID != 0 {
		info.Cgroup = cgroupPath(info.CgroupID)
	}
	if m := g.maps[mapConfig]; m != nil {
		gen, _, err := readConfig(m)
		if err != nil {
			return info, fmt.Errorf("read bind guard: %w", err)
		}
		count := func(name string) (int, error) {
			m := g.maps[name]
			if m == nil {
				return 0, nil
			}
			keys, err := allKeys(m)
			n := 0
			for _, k := range keys {
				if genOf(name, k) == byte(gen) {
					n++
				}
			}
			return n, err
		}
		if info.Ports, err = count(mapPorts); err == nil {
			info.Scopes, err = count(mapScopes)
		}
		if err != nil {
			return info, fmt.Errorf("read bind guard: %w", err)
		}
	}
	return info, nil
}

// lockPins serialises Apply and Remove across processes (two applies, or
// the daemon and the CLI), so one never updates maps the other is
// replacing. The lock is on the parent of the pin directories, which is
// never removed.
func lockPins() (unlock func(), err error) {
	dir := filepath.Join(BPFFS, "portfw")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock pin dir: %w", err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock pin dir: %w", err)
	}
	return func() { unix.Close(fd) }, nil
}
