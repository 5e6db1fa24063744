package bindguard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/portfw/portfw/internal/netns"
	"github.com/portfw/portfw/internal/parallel"
	"golang.org/x/sys/unix"
)

// ErrNotSupported is wrapped by Supported's errors: the host cannot run
// the guard, and `bind_guard: auto` carries on with nftables alone.
var ErrNotSupported = errors.New("bind guard not supported")

var families = []int{4, 6}

var support struct {
	once sync.Once
	err  error
}

// Supported returns nil when this host can run the guard, or an error
// wrapping ErrNotSupported that says why not: no cgroup v2 (the kernel
// lacks it, or this process sees only a cgroup namespace's subtree), a
// kernel without SO_NETNS_COOKIE (5.14) or whose verifier refuses the
// program (bind hooks may grant low ports since 5.12), or no
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
	if _, err := netns.Cookie(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotSupported, err)
	}
	root, err := OpenRoot()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotSupported, err)
	}
	root.Close()
	maps, err := newMaps()
	if err != nil {
		return notSupported("%s", loadProblem(err))
	}
	defer closeMaps(maps)
	for _, fam := range families {
		p, err := newProgram(fam, maps)
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

// Inner maps are sized to their namespace's policy. Kernels before 6.7
// insist that every inner map have its template's size; there they all
// get a fixed size (hash maps then cost their bucket arrays up front).
var flexibleInner = sync.OnceValue(func() bool {
	outer, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.HashOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1,
		InnerMap: &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 1, Flags: unix.BPF_F_NO_PREALLOC}})
	if err != nil {
		return false
	}
	defer outer.Close()
	inner, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 2, Flags: unix.BPF_F_NO_PREALLOC})
	if err != nil {
		return false
	}
	defer inner.Close()
	return outer.Put(uint32(0), inner) == nil
})

// Fixed inner sizes, for kernels without flexible inner maps: every port,
// and room for large owner lists.
const (
	fixedPorts  = maxPortKeys
	fixedOwners = 1 << 16
	fixedLPM    = 1 << 16
	maxNets     = 1 << 16 // namespaces on one host
)

func innerSpec(name string, n int) *ebpf.MapSpec {
	size := func(fixed int) uint32 {
		if flexibleInner() {
			return uint32(max(n, 1))
		}
		return uint32(fixed)
	}
	switch name {
	case mapPorts:
		return &ebpf.MapSpec{Name: "pfw2_port", Type: ebpf.Hash, KeySize: portsKeySize, ValueSize: portsValueSize, MaxEntries: size(fixedPorts), Flags: unix.BPF_F_NO_PREALLOC}
	case mapScopes:
		return &ebpf.MapSpec{Name: "pfw2_scope", Type: ebpf.LPMTrie, KeySize: scopesKeySize, ValueSize: 4, MaxEntries: size(fixedLPM), Flags: unix.BPF_F_NO_PREALLOC}
	case mapOwners:
		return &ebpf.MapSpec{Name: "pfw2_owner", Type: ebpf.Hash, KeySize: ownersKeySize, ValueSize: 4, MaxEntries: size(fixedOwners), Flags: unix.BPF_F_NO_PREALLOC}
	case mapRanges:
		return &ebpf.MapSpec{Name: "pfw2_range", Type: ebpf.LPMTrie, KeySize: rangesKeySize, ValueSize: 4, MaxEntries: size(fixedLPM), Flags: unix.BPF_F_NO_PREALLOC}
	}
	panic("bindguard: no inner map " + name)
}

func outerSpec(name string) *ebpf.MapSpec {
	spec := outerShape(name)
	if name != mapNets {
		spec.InnerMap = innerSpec(name, 1)
	}
	return spec
}

// outerShape is outerSpec without the inner maps' template, whose size
// depends on the kernel (flexibleInner, a probe that waits for an RCU
// grace period: 6 ms): what telling portfw's maps from others' needs.
func outerShape(name string) *ebpf.MapSpec {
	if name == mapNets {
		return &ebpf.MapSpec{Name: mapNets, Type: ebpf.Hash, KeySize: netsKeySize, ValueSize: netsValueSize, MaxEntries: maxNets, Flags: unix.BPF_F_NO_PREALLOC}
	}
	// Two generations per namespace while an update is under way.
	return &ebpf.MapSpec{Name: name, Type: ebpf.HashOfMaps, KeySize: outerKeySize, ValueSize: 4, MaxEntries: 2 * maxNets,
		Flags: unix.BPF_F_NO_PREALLOC}
}

// newMaps creates the five maps, empty.
func newMaps() (map[string]*ebpf.Map, error) {
	maps := map[string]*ebpf.Map{}
	for _, name := range mapNames {
		m, err := ebpf.NewMap(outerSpec(name))
		if err != nil {
			closeMaps(maps)
			return nil, fmt.Errorf("create map %s: %w", name, err)
		}
		maps[name] = m
	}
	return maps, nil
}

func closeMaps(maps map[string]*ebpf.Map) {
	for _, m := range maps {
		m.Close()
	}
}

func newProgram(family int, maps map[string]*ebpf.Map) (*ebpf.Program, error) {
	spec := programSpec(family)
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

// Host is the guard of one cgroup: the root of the cgroup v2 hierarchy
// (every process on the host), or a subtree for tests. It holds the cgroup
// open; the kernel objects are found or made by each call, under a lock
// shared by every portfw on the host (flock on the cgroup directory, which
// is one inode however many times and wherever the hierarchy is mounted).
type Host struct {
	dir  *os.File
	name string // the cgroup's path in the hierarchy, "/" for the root

	// The guard last found, by the programs attached when it was: the
	// same program ids are the same programs with the same maps, so a
	// daemon's reload need not check them again (that check reads the
	// fdinfo of every map: a third of a 1k reload).
	mu       sync.Mutex
	found    *installed
	foundIDs []ebpf.ProgramID

	// ops makes lock exclusive within the process too: the flock is taken
	// on h.dir, one descriptor, so every goroutine would hold it at once.
	ops sync.Mutex
}

// OpenHost opens the guard of the cgroup at path (relative to the root of
// the cgroup v2 hierarchy; "" for the root itself).
func OpenHost(path string) (*Host, error) {
	dir, name, err := OpenCgroup(path)
	if err != nil {
		return nil, err
	}
	return &Host{dir: dir, name: name}, nil
}

// Cgroup is the path of the cgroup the guard attaches to.
func (h *Host) Cgroup() string { return h.name }

// Close releases the cgroup.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.found != nil {
		h.found.close()
		h.found = nil
	}
	h.mu.Unlock()
	return h.dir.Close()
}

func (h *Host) lock() (func(), error) {
	h.ops.Lock()
	if err := unix.Flock(int(h.dir.Fd()), unix.LOCK_EX); err != nil {
		h.ops.Unlock()
		return nil, fmt.Errorf("lock the bind guard: %w", err)
	}
	return func() {
		unix.Flock(int(h.dir.Fd()), unix.LOCK_UN)
		h.ops.Unlock()
	}, nil
}

// installed is the guard the kernel runs: both programs and their maps.
type installed struct {
	progs map[int]*ebpf.Program
	maps  map[string]*ebpf.Map
	// foreign lists programs that carry portfw's name but are not this
	// portfw's (another build or a copy): never touched, reported.
	foreign []string
}

func (in *installed) close() {
	for _, p := range in.progs {
		p.Close()
	}
	closeMaps(in.maps)
}

// otherLayout matches the names portfw's programs have had (progName).
var otherLayout = regexp.MustCompile(`^portfw[0-9]+_bind[46]$`)

// find looks for portfw's programs on the cgroup. A program is portfw's
// when its name, tag (the instructions, so another build never passes),
// maps (names, types, sizes) and creator (uid 0) all say so: never by name
// alone, since any root process can copy a name. It returns nil, nil when
// there is none.
func (h *Host) find() (*installed, error) {
	attached := make([][]link.AttachedProgram, len(families))
	var ids []ebpf.ProgramID
	for i, fam := range families {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(h.dir.Fd()), Attach: attachType(fam)})
		if err != nil {
			return nil, fmt.Errorf("query the bind%d programs of cgroup %s: %w", fam, h.name, err)
		}
		attached[i] = res.Programs
		for _, ap := range res.Programs {
			ids = append(ids, ap.ID)
		}
		ids = append(ids, 0) // the end of a family's list
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.found != nil && slices.Equal(ids, h.foundIDs) {
		return h.found.clone()
	}
	in, err := h.check(attached)
	if err != nil {
		return nil, err
	}
	if h.found != nil {
		h.found.close()
		h.found = nil
	}
	if in == nil {
		return nil, nil
	}
	keep, err := in.clone()
	if err != nil {
		in.close()
		return nil, err
	}
	h.found, h.foundIDs = keep, ids
	return in, nil
}

// clone is a copy of in with file descriptors of its own, for the caller
// to close.
func (in *installed) clone() (*installed, error) {
	c := &installed{progs: map[int]*ebpf.Program{}, foreign: slices.Clone(in.foreign)}
	for fam, p := range in.progs {
		q, err := p.Clone()
		if err != nil {
			c.close()
			return nil, err
		}
		c.progs[fam] = q
	}
	if in.maps != nil {
		c.maps = map[string]*ebpf.Map{}
		for name, m := range in.maps {
			n, err := m.Clone()
			if err != nil {
				c.close()
				return nil, err
			}
			c.maps[name] = n
		}
	}
	return c, nil
}

// check is find's look at each attached program.
func (h *Host) check(attached [][]link.AttachedProgram) (*installed, error) {
	in := &installed{progs: map[int]*ebpf.Program{}}
	for i, fam := range families {
		for _, ap := range attached[i] {
			p, err := ebpf.NewProgramFromID(ap.ID)
			if err != nil {
				continue // detached meanwhile
			}
			info, err := p.Info()
			if err == nil && info.Name != progName(fam) && otherLayout.MatchString(info.Name) {
				// Another portfw's, of another map layout: it keeps
				// enforcing what that version wrote, beside this one's.
				in.foreign = append(in.foreign, fmt.Sprintf("program %d (%s): a portfw of another map layout (this one is %d); that version's `portfw remove` detaches it",
					ap.ID, info.Name, layoutVersion))
			}
			if err != nil || info.Name != progName(fam) {
				p.Close()
				continue
			}
			maps, why := ours(fam, p, info)
			if why != "" || in.progs[fam] != nil || (in.maps != nil && !sameMaps(in.maps, maps)) {
				if why == "" {
					why = "a second copy"
				}
				in.foreign = append(in.foreign, fmt.Sprintf("program %d (%s): %s", ap.ID, info.Name, why))
				closeMaps(maps)
				p.Close()
				continue
			}
			in.progs[fam] = p
			if in.maps == nil {
				in.maps = maps
			} else {
				closeMaps(maps)
			}
		}
	}
	if len(in.progs) == 0 {
		foreign := in.foreign
		in.close()
		if len(foreign) > 0 {
			return &installed{foreign: foreign}, nil
		}
		return nil, nil
	}
	return in, nil
}

// ours checks a program found by name and opens its maps; why says what
// differs when it is not portfw's.
func ours(fam int, p *ebpf.Program, info *ebpf.ProgramInfo) (map[string]*ebpf.Map, string) {
	if uid, ok := info.CreatedByUID(); ok && uid != 0 {
		return nil, fmt.Sprintf("created by uid %d", uid)
	}
	if err := compatible(fam, info); err != nil {
		return nil, "its instructions differ from this portfw's (another version?)"
	}
	ids, ok := info.MapIDs()
	if !ok {
		return nil, "its maps cannot be read"
	}
	maps := map[string]*ebpf.Map{}
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			closeMaps(maps)
			return nil, fmt.Sprintf("map %d: %v", id, err)
		}
		mi, err := m.Info()
		if err != nil || maps[mi.Name] != nil {
			m.Close()
			closeMaps(maps)
			return nil, "its maps are not portfw's"
		}
		if !slices.Contains(mapNames, mi.Name) {
			m.Close()
			closeMaps(maps)
			return nil, fmt.Sprintf("map %q is not portfw's", mi.Name)
		}
		if want := outerShape(mi.Name); mi.Type != want.Type || mi.KeySize != want.KeySize || mi.ValueSize != want.ValueSize {
			m.Close()
			closeMaps(maps)
			return nil, fmt.Sprintf("map %q is not portfw's", mi.Name)
		}
		maps[mi.Name] = m
	}
	if len(maps) != len(mapNames) {
		closeMaps(maps)
		return nil, "it does not use portfw's five maps"
	}
	return maps, ""
}

// compatible compares the kernel's tag of a program with this portfw's
// program. The tag hashes the instructions with jumps resolved (and map
// references zeroed), so the spec is marshalled once first to resolve its
// symbolic jumps.
func compatible(fam int, info *ebpf.ProgramInfo) error {
	spec := programSpec(fam)
	if err := spec.Instructions.Marshal(io.Discard, hostOrder); err != nil {
		return err
	}
	return spec.Compatible(info)
}

// hostOrder is binary.NativeEndian as one of the two orders the assembler
// accepts.
var hostOrder = func() binary.ByteOrder {
	if binary.NativeEndian.Uint16([]byte{1, 0}) == 1 {
		return binary.LittleEndian
	}
	return binary.BigEndian
}()

func sameMaps(a, b map[string]*ebpf.Map) bool {
	for name, m := range a {
		x, y := mapID(m), mapID(b[name])
		if x == 0 || x != y {
			return false
		}
	}
	return true
}

func mapID(m *ebpf.Map) ebpf.MapID {
	if m == nil {
		return 0
	}
	info, err := m.Info()
	if err != nil {
		return 0
	}
	id, _ := info.ID()
	return id
}

// install completes the guard: it creates the maps if there are none, and
// loads and attaches every program that is missing. Programs are attached
// the legacy way (BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI): they stay
// attached when portfw exits, with no pin, and run beside anyone else's.
func (h *Host) install(in *installed) (*installed, error) {
	if in == nil || in.maps == nil {
		var foreign []string
		if in != nil {
			foreign = in.foreign
		}
		maps, err := newMaps()
		if err != nil {
			return nil, err
		}
		in = &installed{progs: map[int]*ebpf.Program{}, maps: maps, foreign: foreign}
	}
	for _, fam := range families {
		if in.progs[fam] != nil {
			continue
		}
		p, err := newProgram(fam, in.maps)
		if err != nil {
			in.close()
			return nil, err
		}
		if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: int(h.dir.Fd()), Program: p,
			Attach: attachType(fam), Flags: unix.BPF_F_ALLOW_MULTI}); err != nil {
			p.Close()
			in.close()
			return nil, fmt.Errorf("attach the bind%d program to cgroup %s: %w", fam, h.name, err)
		}
		in.progs[fam] = p
	}
	return in, nil
}

// detach takes portfw's programs off the cgroup.
func (h *Host) detach(in *installed) error {
	var errs []error
	for fam, p := range in.progs {
		if err := link.RawDetachProgram(link.RawDetachProgramOptions{Target: int(h.dir.Fd()), Program: p, Attach: attachType(fam)}); err != nil {
			errs = append(errs, fmt.Errorf("detach the bind%d program: %w", fam, err))
		}
	}
	return errors.Join(errs...)
}

// Apply makes the guard enforce spec for binds in the network namespace
// with this cookie (and nsfs inode, kept for the sweep). It changes the
// namespace's maps in place when they can take it (updateInPlace);
// otherwise the new policy is a new generation of the namespace's four
// inner maps, switched to with one write. Either way no bind ever sees a
// port unguarded.
func (h *Host) Apply(cookie, inode uint64, spec Spec) error {
	_, err := h.apply(cookie, inode, func() Spec { return spec }, nil)
	return err
}

// written is what an apply left in the kernel for a namespace: the
// generation, its inner maps and how owner sets are numbered in them.
type written struct {
	gen  uint32
	ids  [4]ebpf.MapID // of the inner maps, in mapNames[1:] order
	num  func(OwnerID) uint32
	size [4]int // entries in each inner map
}

// apply is Apply of the spec that spec returns, called once the kernel's
// side is read (Namespace.Apply works the spec out meanwhile). bound, when
// not nil, is how many entries each inner map (mapNames[1:] order) will
// likely hold at most: a new generation's maps are then made and put into
// the outer maps empty while the spec is worked out (see below).
func (h *Host) apply(cookie, inode uint64, spec func() Spec, bound *[4]int) (written, error) {
	unlock, err := h.lock()
	if err != nil {
		return written{}, err
	}
	defer unlock()
	found, err := h.find()
	if err != nil {
		return written{}, err
	}
	in, err := h.install(found)
	if err != nil {
		return written{}, err
	}
	defer in.close()
	cur, had, err := lookupNet(in.maps[mapNets], cookie)
	if err != nil {
		return written{}, err
	}
	if had && cur.inode == inode {
		w, done, err := updateInPlace(in, cookie, cur.gen, spec)
		if done || err != nil {
			return w, err
		}
	}
	next := cur.gen + 1
	if next == 0 {
		next = 1
	}
	// Each insertion into an outer map waits for an RCU grace period (the
	// kernel lets running programs finish with the old value), 6-35 ms
	// here; concurrent ones share it. With a bound, the four inner maps
	// are made and inserted empty first, beside the spec's making, so the
	// wait passes while the CPUs work; they are filled once it is known.
	// Their order does not matter: binds read them only once the nets
	// entry below names the generation. A map the spec outgrows is made
	// again, of its size, after it (as without a bound).
	inners := mapNames[1:]
	var early [4]*ebpf.Map
	var earlySize [4]int
	defer func() {
		for _, m := range early {
			if m != nil {
				m.Close() // the outer map holds it then
			}
		}
	}()
	published := func() error { return nil }
	if bound != nil {
		published = parallel.Go(func() error {
			return parallel.Each(len(inners), len(inners), func(_, i int) error {
				ms := innerSpec(inners[i], 2*bound[i]+64)
				inner, err := ebpf.NewMap(ms)
				if err != nil {
					return err
				}
				if err := in.maps[inners[i]].Put(outerKey(cookie, next), inner); err != nil {
					inner.Close()
					return err
				}
				early[i], earlySize[i] = inner, int(ms.MaxEntries)
				return nil
			})
		})
	}
	e := encode(spec())
	published() // its failures are the maps below made again
	w := written{gen: next, num: func(id OwnerID) uint32 { return uint32(id) }}
	err = parallel.Each(len(inners), len(inners), func(_, i int) error {
		name := inners[i]
		if inner := early[i]; inner != nil && len(e.of(name)) <= earlySize[i] {
			if err := put(inner, name, e.of(name)); err != nil {
				return fmt.Errorf("update map %s: %w", name, err)
			}
			w.ids[i], w.size[i] = mapID(inner), len(e.of(name))
			return nil
		}
		// Room to grow in place (updateInPlace) before the next generation.
		inner, err := ebpf.NewMap(innerSpec(name, 2*len(e.of(name))+64))
		if err != nil {
			return fmt.Errorf("create map %s: %w", name, err)
		}
		defer inner.Close() // the outer map holds it then
		if err := put(inner, name, e.of(name)); err != nil {
			return fmt.Errorf("update map %s: %w", name, err)
		}
		if err := in.maps[name].Put(outerKey(cookie, next), inner); err != nil {
			return fmt.Errorf("update map %s: %w", name, err)
		}
		w.ids[i], w.size[i] = mapID(inner), len(e.of(name))
		return nil
	})
	if err != nil {
		return written{}, err
	}
	if err := in.maps[mapNets].Put(cookie, netEntry{gen: next, inode: inode}.bytes()); err != nil {
		return written{}, fmt.Errorf("update map %s: %w", mapNets, err)
	}
	keep := []uint32{next}
	if had {
		keep = append(keep, cur.gen) // a bind may still be reading it
	}
	return w, deleteGenerations(in.maps, cookie, keep)
}

// applyDelta writes the entries a Builder computed into the namespace's
// current inner maps, if they are still the ones w describes (same
// generation, same maps: nobody else changed them) and can take the growth;
// false, having written nothing, otherwise. The order is updateInPlace's.
func (h *Host) applyDelta(cookie uint64, w *written, puts, dels entries) (bool, error) {
	unlock, err := h.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	in, err := h.find()
	if err != nil || in == nil || in.maps == nil || len(in.progs) != len(families) {
		return false, err
	}
	defer in.close()
	cur, had, err := lookupNet(in.maps[mapNets], cookie)
	if err != nil || !had || cur.gen != w.gen {
		return false, err
	}
	maps := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range maps {
			m.Close()
		}
	}()
	for i, name := range mapNames[1:] {
		var inner *ebpf.Map
		if err := in.maps[name].Lookup(outerKey(cookie, cur.gen), &inner); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return false, nil
			}
			return false, fmt.Errorf("read map %s: %w", name, err)
		}
		maps[name] = inner
		info, err := inner.Info()
		if err != nil {
			return false, fmt.Errorf("read map %s: %w", name, err)
		}
		if id, _ := info.ID(); id != w.ids[i] || w.size[i]+len(puts.of(name)) > int(info.MaxEntries) {
			return false, nil
		}
	}
	for _, name := range []string{mapOwners, mapRanges, mapScopes, mapPorts} {
		if err := putEach(maps[name], name, puts.of(name)); err != nil {
			return true, err
		}
	}
	for _, name := range []string{mapPorts, mapScopes, mapRanges, mapOwners} {
		if err := del(maps[name], name, dels.of(name)); err != nil {
			return true, err
		}
	}
	for i, name := range mapNames[1:] {
		w.size[i] += len(puts.of(name)) - len(dels.of(name))
	}
	return true, nil
}

func lookupNet(nets *ebpf.Map, cookie uint64) (netEntry, bool, error) {
	v, err := nets.LookupBytes(cookie)
	if err != nil {
		return netEntry{}, false, fmt.Errorf("read map %s: %w", mapNets, err)
	}
	if v == nil {
		return netEntry{}, false, nil
	}
	return parseNetEntry(v), true, nil
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

// put writes kvs into a map: in one BPF_MAP_UPDATE_BATCH where the map
// type has it (hash maps; 20k entries in one call instead of 20k), else
// one update per key. A batch is not atomic: for maps a bind reads, the
// entries of one batch must be independent of each other (they are: each
// is a whole port, scope or owner entry).
func put(m *ebpf.Map, name string, kvs []kv) error {
	if len(kvs) == 0 {
		return nil
	}
	if keys, vals, ok := batchOf(kvs); ok {
		if n, err := m.BatchUpdate(keys, vals, nil); err == nil && n == len(kvs) {
			return nil
		}
	}
	for _, e := range kvs {
		if err := m.Put(e.k, e.v); err != nil {
			return fmt.Errorf("update map %s: %w", name, err)
		}
	}
	return nil
}

// putEach is put for a handful of entries, one update each.
func putEach(m *ebpf.Map, name string, kvs []kv) error {
	if len(kvs) > 16 {
		return put(m, name, kvs)
	}
	for _, e := range kvs {
		if err := m.Put(e.k, e.v); err != nil {
			return fmt.Errorf("update map %s: %w", name, err)
		}
	}
	return nil
}

// batchOf turns kvs into two slices of fixed-size arrays, as BatchUpdate
// wants them; false if the sizes differ.
func batchOf(kvs []kv) (keys, vals any, ok bool) {
	ks, vs := len(kvs[0].k), len(kvs[0].v)
	kt, vt := reflect.ArrayOf(ks, reflect.TypeFor[byte]()), reflect.ArrayOf(vs, reflect.TypeFor[byte]())
	k, v := reflect.MakeSlice(reflect.SliceOf(kt), len(kvs), len(kvs)), reflect.MakeSlice(reflect.SliceOf(vt), len(kvs), len(kvs))
	// Filled through their bytes: reflect.Copy per entry was a tenth of
	// laying out 90k entries.
	kb := unsafe.Slice((*byte)(k.UnsafePointer()), len(kvs)*ks)
	vb := unsafe.Slice((*byte)(v.UnsafePointer()), len(kvs)*vs)
	for i, e := range kvs {
		if len(e.k) != ks || len(e.v) != vs {
			return nil, nil, false
		}
		copy(kb[i*ks:], e.k)
		copy(vb[i*vs:], e.v)
	}
	return k.Interface(), v.Interface(), true
}

// deleteGenerations deletes the inner maps of cookie whose generation is
// not in keep (all of them for a nil keep).
func deleteGenerations(maps map[string]*ebpf.Map, cookie uint64, keep []uint32) error {
	return deleteInner(maps, func(c uint64, gen uint32) bool { return c == cookie && !slices.Contains(keep, gen) })
}

// deleteInner deletes the inner maps, of every namespace and generation,
// that stale says are.
func deleteInner(maps map[string]*ebpf.Map, stale func(cookie uint64, gen uint32) bool) error {
	// One outer map per goroutine: each deletion waits for a grace period
	// (see Host.apply), and concurrent ones share it.
	inners := mapNames[1:]
	return parallel.Each(len(inners), len(inners), func(_, i int) error {
		name := inners[i]
		keys, err := allKeys(maps[name])
		if err != nil {
			return fmt.Errorf("read map %s: %w", name, err)
		}
		for _, k := range keys {
			if !stale(parseOuterKey(k)) {
				continue
			}
			if err := maps[name].Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete from map %s: %w", name, err)
			}
		}
		return nil
	})
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

// Remove takes the namespace's entries out and, when no namespace is left,
// detaches the programs. It reports whether the namespace had a guard.
func (h *Host) Remove(cookie uint64) (bool, error) {
	unlock, err := h.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	in, err := h.find()
	if err != nil || in == nil || in.maps == nil {
		return false, err
	}
	defer in.close()
	_, had, err := lookupNet(in.maps[mapNets], cookie)
	if err != nil {
		return false, err
	}
	if had {
		// The namespace's entry goes first: from then on its binds pass.
		if err := in.maps[mapNets].Delete(cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return true, fmt.Errorf("delete from map %s: %w", mapNets, err)
		}
	}
	if err := deleteGenerations(in.maps, cookie, nil); err != nil {
		return had, err
	}
	return had, h.detachIfUnused(in)
}

func (h *Host) detachIfUnused(in *installed) error {
	keys, err := allKeys(in.maps[mapNets])
	if err != nil {
		return fmt.Errorf("read map %s: %w", mapNets, err)
	}
	if len(keys) > 0 {
		return nil
	}
	return h.detach(in)
}

// Sweep removes the entries of namespaces that no longer exist, as alive
// tells (an error keeps the entry), and detaches the programs when none is
// left. It returns the cookies it removed.
func (h *Host) Sweep(alive func(cookie, inode uint64) (bool, error)) ([]uint64, error) {
	unlock, err := h.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	in, err := h.find()
	if err != nil || in == nil || in.maps == nil {
		return nil, err
	}
	defer in.close()
	nets := in.maps[mapNets]
	keys, err := allKeys(nets)
	if err != nil {
		return nil, fmt.Errorf("read map %s: %w", mapNets, err)
	}
	current := map[uint64]uint32{}
	var swept []uint64
	var errs []error
	for _, k := range keys {
		v, err := nets.LookupBytes(k)
		if err != nil || v == nil {
			continue
		}
		cookie, e := binary.NativeEndian.Uint64(k), parseNetEntry(v)
		ok, err := alive(cookie, e.inode)
		if err != nil {
			errs = append(errs, err)
			ok = true
		}
		if ok {
			current[cookie] = e.gen
			continue
		}
		if err := nets.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return swept, fmt.Errorf("delete from map %s: %w", mapNets, err)
		}
		swept = append(swept, cookie)
	}
	// Inner maps of swept namespaces, and leftovers of an update that
	// stopped halfway (a generation nets never switched to).
	err = deleteInner(in.maps, func(c uint64, gen uint32) bool {
		g, ok := current[c]
		return !ok || gen != g && gen+1 != g && (g != 1 || gen != ^uint32(0))
	})
	if err != nil {
		return swept, err
	}
	if len(current) == 0 {
		if err := h.detach(in); err != nil {
			return swept, err
		}
	}
	return swept, errors.Join(errs...)
}

// Active reports whether the namespace has a policy in the guard: both
// programs attached, its entry in the nets map, and its current inner maps
// there. It reads no entries.
func (h *Host) Active(cookie uint64) (bool, error) {
	in, err := h.find()
	if err != nil || in == nil || in.maps == nil {
		return false, err
	}
	defer in.close()
	if len(in.progs) != len(families) {
		return false, nil
	}
	e, ok, err := lookupNet(in.maps[mapNets], cookie)
	if err != nil || !ok {
		return false, err
	}
	for _, name := range mapNames[1:] {
		var inner *ebpf.Map
		if err := in.maps[name].Lookup(outerKey(cookie, e.gen), &inner); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return false, nil
			}
			return false, fmt.Errorf("read map %s: %w", name, err)
		}
		inner.Close()
	}
	return true, nil
}

// Info is what Status finds.
type Info struct {
	// Attached: portfw's bind4 and bind6 programs are on Cgroup.
	Attached bool   `json:"attached"`
	Cgroup   string `json:"cgroup"`
	// Active: the namespace asked about has a policy in the guard.
	Active bool `json:"active"`
	// Namespaces is how many network namespaces the programs guard.
	Namespaces int `json:"namespaces"`
	// Ports and Scopes count the namespace's guarded (protocol, port)
	// pairs and address-scoped entries.
	Ports  int `json:"ports"`
	Scopes int `json:"scopes"`
	// ProgramIDs are the kernel's ids of the bind4 and bind6 programs.
	ProgramIDs []uint32 `json:"program_ids,omitempty"`
	// Foreign lists programs named like portfw's that are not this
	// portfw's (another build): they are left alone.
	Foreign []string `json:"foreign,omitempty"`
}

// Status reports the guard and the namespace's part of it.
func (h *Host) Status(cookie uint64) (Info, error) { return h.status(cookie, nil) }

// status is Status; with counts (ports, scopes), the namespace's entries
// are not counted but taken from there: what the caller wrote.
func (h *Host) status(cookie uint64, counts *[2]int) (Info, error) {
	info := Info{Cgroup: h.name}
	in, err := h.find()
	if err != nil || in == nil {
		return info, err
	}
	info.Foreign = in.foreign
	if in.maps == nil {
		return info, nil
	}
	defer in.close()
	info.Attached = len(in.progs) == len(families)
	for _, fam := range families {
		if p := in.progs[fam]; p != nil {
			if pi, err := p.Info(); err == nil {
				if id, ok := pi.ID(); ok {
					info.ProgramIDs = append(info.ProgramIDs, uint32(id))
				}
			}
		}
	}
	keys, err := allKeys(in.maps[mapNets])
	if err != nil {
		return info, fmt.Errorf("read map %s: %w", mapNets, err)
	}
	info.Namespaces = len(keys)
	e, ok, err := lookupNet(in.maps[mapNets], cookie)
	if err != nil || !ok {
		return info, err
	}
	info.Active = true
	if counts != nil {
		info.Ports, info.Scopes = counts[0], counts[1]
		return info, nil
	}
	count := func(name string) (int, error) {
		var inner *ebpf.Map
		if err := in.maps[name].Lookup(outerKey(cookie, e.gen), &inner); err != nil {
			return 0, fmt.Errorf("read map %s: %w", name, err)
		}
		defer inner.Close()
		kvs, err := readAll(inner) // in batches: 20k entries in a few calls
		return len(kvs), err
	}
	if info.Ports, err = count(mapPorts); err == nil {
		info.Scopes, err = count(mapScopes)
	}
	return info, err
}
