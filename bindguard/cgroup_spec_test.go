package bindguard

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/testenv"
)

func unit(name string, level uint8, id uint64) model.Cgroup {
	path := ""
	if id != 0 {
		path = "/system.slice/" + name
	}
	return model.Cgroup{Source: name, Unit: true, Path: path, Level: level, ID: id}
}

// cgroupPolicy has owners that are cgroups: alone, two names for one
// cgroup, beside a uid, waiting, and on address scopes sharing a port.
func cgroupPolicy() *model.Resolved {
	tcp := []model.Protocol{model.TCP}
	v4 := func(s string) []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix(s)} }
	return &model.Resolved{
		Settings: model.Settings{AllowRoot: true},
		Reservations: []model.Reservation{
			{Name: "both", Protocols: tcp, Ports: []model.PortRange{model.Port(8081)},
				Owners: model.Owners{Root: true, UIDs: idr(1000, 1000), Cgroups: []model.Cgroup{{Source: "/app", Path: "/app", Level: 1, ID: 4242}}}},
			{Name: "nginx", Protocols: []model.Protocol{model.TCP, model.UDP}, Ports: []model.PortRange{model.Port(80)},
				Owners: model.Owners{Cgroups: []model.Cgroup{
					unit("late.service", 0, 0), // waiting: owns nothing
					unit("nginx.service", 2, 4711),
					{Source: "/system.slice/nginx.service", Path: "/system.slice/nginx.service", Level: 2, ID: 4711},
				}}},
			{Name: "scope-a", Protocols: tcp, Ports: []model.PortRange{model.Port(9090)}, Addresses: v4("192.0.2.10/32"),
				Owners: model.Owners{UIDs: idr(5, 5), Cgroups: []model.Cgroup{unit("a.service", 2, 101), unit("b.service", 2, 102)}}},
			{Name: "scope-b", Protocols: tcp, Ports: []model.PortRange{model.Port(9090)}, Addresses: v4("192.0.2.20/32"),
				Owners: model.Owners{UIDs: idr(5, 5), Cgroups: []model.Cgroup{unit("b.service", 2, 102), unit("c.service", 2, 103)}}},
			{Name: "waiting", Protocols: tcp, Ports: []model.PortRange{model.Port(8082)},
				Owners: model.Owners{Cgroups: []model.Cgroup{unit("idle.service", 0, 0)}}},
		},
	}
}

// TestFromResolvedCgroups: an owner set holds the ids of the cgroups that
// exist, once each; a waiting cgroup owns nothing; a wildcard bind on a
// port with scopes needs a uid or a cgroup that owns every scope.
func TestFromResolvedCgroups(t *testing.T) {
	want := `owners 1: uid - gid -
owners 2: uid - gid - cgroup 4711
owners 3: uid 0,1000 gid - cgroup 4242
owners 4: uid 5 gid - cgroup 101,102
owners 5: uid 5 gid - cgroup 102
owners 6: uid 5 gid - cgroup 102,103
tcp/80 default 2 wild4 2 wild6 2
tcp/8081 default 3 wild4 3 wild6 3
tcp/8082 default 1 wild4 1 wild6 1
tcp/9090 default - wild4 5 wild6 5 scoped
udp/80 default 2 wild4 2 wild6 2
tcp/9090 192.0.2.10/32 owners 4
tcp/9090 192.0.2.20/32 owners 6
`
	got := FromResolved(cgroupPolicy())
	if diff := cmp.Diff(want, got.String()); diff != "" {
		t.Errorf("FromResolved mismatch (-want +got):\n%s", diff)
	}
	b, err := json.Marshal(got.Owners[1:3])
	if err != nil {
		t.Fatal(err)
	}
	if want := `[{"cgroups":[4711]},{"uids":[{"Lo":0,"Hi":0},{"Lo":1000,"Hi":1000}],"cgroups":[4242]}]`; string(b) != want {
		t.Errorf("JSON = %s, want %s", b, want)
	}
	// Without cgroups, the JSON keeps its old shape.
	if b, _ := json.Marshal(Owners{UIDs: idr(1, 1)}); strings.Contains(string(b), "cgroups") {
		t.Errorf("JSON of an owner set without cgroups = %s", b)
	}
}

func TestIntersectCgroups(t *testing.T) {
	a := Owners{UIDs: idr(1, 10), GIDs: idr(7, 7), Cgroups: []uint64{3, 5, 8, 13}}
	b := Owners{UIDs: idr(5, 20), Cgroups: []uint64{1, 5, 13, 21}}
	want := Owners{UIDs: idr(5, 10), Cgroups: []uint64{5, 13}}
	if diff := cmp.Diff(want, intersect(a, b)); diff != "" {
		t.Errorf("intersect (-want +got):\n%s", diff)
	}
	if got := intersect(Owners{Cgroups: []uint64{1}}, Owners{UIDs: idr(1, 1)}); len(got.Cgroups)+len(got.UIDs)+len(got.GIDs) != 0 {
		t.Errorf("a cgroup and a uid intersect as %+v, want nobody", got)
	}
}

// TestOwnersKey: distinct sets have distinct keys, whatever list their
// members are in.
func TestOwnersKey(t *testing.T) {
	const max = 0xffffffff
	sets := []Owners{
		{},
		{UIDs: idr(max, max)},
		{GIDs: idr(max, max)},
		{Cgroups: []uint64{max}},
		{Cgroups: []uint64{max<<32 | max}},
		{UIDs: idr(max, max), GIDs: idr(max, max)},
		{UIDs: idr(1, 1)},
		{GIDs: idr(1, 1)},
		{Cgroups: []uint64{1}},
		{Cgroups: []uint64{1 << 32}},
		{UIDs: idr(1, 1), Cgroups: []uint64{1}},
		{GIDs: idr(1, 1), Cgroups: []uint64{1}},
		{Cgroups: []uint64{1, 2}},
	}
	seen := map[string]int{}
	for i, o := range sets {
		k := ownersKey(o)
		if j, ok := seen[k]; ok {
			t.Errorf("owner sets %+v and %+v share key %x", sets[j], o, k)
		}
		seen[k] = i
		for j, p := range sets {
			if (compareOwners(o, p) == 0) != (i == j) {
				t.Errorf("compareOwners(%+v, %+v) = %d", o, p, compareOwners(o, p))
			}
		}
	}
}

// TestEncodeCgroups: a cgroup is an owners entry of kind 3 keyed by its id,
// and a reference to a set with cgroups carries the flag that makes the
// program look them up.
func TestEncodeCgroups(t *testing.T) {
	spec := Spec{
		Owners: []Owners{{Cgroups: []uint64{4711}}, {UIDs: idr(33, 33, 1000, 1003), GIDs: idr(7, 8), Cgroups: []uint64{5, 0x0123456789abcdef}}, {UIDs: idr(1, 1)}},
		Ports:  []Port{{Proto: model.TCP, Port: 80, Default: 1, Wild4: 2, Wild6: 3}},
	}
	e := encode(spec)
	v := e.ports[0].v
	refs := []uint32{binary.NativeEndian.Uint32(v), binary.NativeEndian.Uint32(v[4:]), binary.NativeEndian.Uint32(v[8:])}
	if want := []uint32{1<<refShift | refCgroups, 2<<refShift | refUIDRanges | refGIDRanges | refCgroups, 3 << refShift}; !slices.Equal(refs, want) {
		t.Errorf("refs = %#x, want %#x", refs, want)
	}
	var cgroups []string
	for _, x := range e.owners {
		if len(x.k) != ownersKeySize || x.k[1] != 0 || x.k[2] != 0 || x.k[3] != 0 {
			t.Errorf("owners key %x", x.k)
		}
		if x.k[0] == kindCgroup {
			cgroups = append(cgroups, fmt.Sprintf("%d:%#x", binary.NativeEndian.Uint32(x.k[4:]), binary.NativeEndian.Uint64(x.k[8:])))
		}
	}
	if want := []string{"1:0x1267", "2:0x5", "2:0x123456789abcdef"}; !slices.Equal(cgroups, want) {
		t.Errorf("cgroup entries (set:id) = %v, want %v", cgroups, want)
	}
	// Numbers stop where the flags would overflow an ownerRef.
	if n := uint32(maxNum); n<<refShift>>refShift != n || (n+1)<<refShift != 0 {
		t.Errorf("maxNum %#x does not fit an ownerRef", maxNum)
	}
}

// TestBuilderCgroupStarts: when a waiting unit starts (its cgroup appears)
// the Builder writes the cgroup's entry and the port's new reference, in
// the entries FromResolved would make.
func TestBuilderCgroupStarts(t *testing.T) {
	pol := func(c model.Cgroup) *model.Resolved {
		return &model.Resolved{Reservations: []model.Reservation{{Name: "web", Protocols: []model.Protocol{model.TCP},
			Ports: []model.PortRange{model.Port(80)}, Owners: model.Owners{UIDs: idr(33, 33), Cgroups: []model.Cgroup{c}}}}}
	}
	before, after := pol(unit("nginx.service", 0, 0)), pol(unit("nginx.service", 2, 4711))
	spec := FromResolved(before)
	maps := newSim(encode(spec))
	b := NewBuilder(before, spec, func(id OwnerID) uint32 { return uint32(id) })
	put, del, ok := b.Update(after)
	if !ok {
		t.Fatal("numbers ran out")
	}
	var kinds []byte
	for _, x := range put.owners {
		kinds = append(kinds, x.k[0])
	}
	slices.Sort(kinds)
	if !slices.Equal(kinds, []byte{kindUID, kindCgroup}) || len(put.ports) != 1 || len(del.owners) != 1 {
		t.Errorf("put %d owners (kinds %v), %d ports; deleted %d owners: want the new set's uid and cgroup, the port, the old set's uid",
			len(put.owners), kinds, len(put.ports), len(del.owners))
	}
	if ref := binary.NativeEndian.Uint32(put.ports[0].v); ref&refCgroups == 0 {
		t.Errorf("port reference %#x lacks the cgroup flag", ref)
	}
	maps.apply(put, del)
	if got, want := maps.canonical(), newSim(encode(FromResolved(after))).canonical(); !slices.Equal(got, want) {
		t.Errorf("maps differ\n got %v\nwant %v", got, want)
	}
	// And back: the unit stopped.
	put, del, _ = b.Update(before)
	maps.apply(put, del)
	if got, want := maps.canonical(), newSim(encode(spec)).canonical(); !slices.Equal(got, want) {
		t.Errorf("after the unit stopped, maps differ\n got %v\nwant %v", got, want)
	}
}

// specDigests records, for each SpecVersion, a digest of what the specs
// and map entries of the test policies below are. A change to FromResolved
// or the layout that changes them must come with a new SpecVersion (and a
// new line here): portfw trusts the kernel's maps while the recorded
// SpecVersion matches.
var specDigests = map[int]string{
	3001: "3fda40182b37ca2c4f8520553ab213e9f33f99e9477780e1d5909aed95f5415c",
}

// TestSpecVersion fails when the specs of its test policies change and
// SpecVersion does not.
func TestSpecVersion(t *testing.T) {
	e := &guardEnv{owner: testenv.Cred{UID: 1000, GID: 1000}, squat: testenv.Cred{UID: 1001, GID: 1001}}
	h := sha256.New()
	for _, r := range []*model.Resolved{e.policy(true), e.policy(false), cgroupPolicy()} {
		spec := FromResolved(r)
		b, _ := json.Marshal(spec)
		fmt.Fprintf(h, "%s\n%s\n%s\n", spec.String(), b, layoutText(encode(spec)))
	}
	got := hex.EncodeToString(h.Sum(nil))
	want, ok := specDigests[SpecVersion]
	if !ok || want != got {
		t.Errorf("the specs of the test policies are %s, SpecVersion %d records %q: if FromResolved or the layout changed, bump SpecVersion and record the digest", got, SpecVersion, want)
	}
}

// layoutText writes map entries with their numbers decoded, so it reads
// the same on every byte order.
func layoutText(e entries) string {
	var b strings.Builder
	for _, x := range e.ports {
		fmt.Fprintf(&b, "port %x:", x.k)
		for i := 0; i < len(x.v); i += 4 {
			fmt.Fprintf(&b, " %#x", binary.NativeEndian.Uint32(x.v[i:]))
		}
		b.WriteByte('\n')
	}
	for _, x := range e.scopes {
		fmt.Fprintf(&b, "scope %d %x: %#x\n", binary.NativeEndian.Uint32(x.k), x.k[4:], binary.NativeEndian.Uint32(x.v))
	}
	for _, x := range e.owners {
		fmt.Fprintf(&b, "owner kind %d set %d id %d\n", x.k[0], binary.NativeEndian.Uint32(x.k[4:]), binary.NativeEndian.Uint64(x.k[8:]))
	}
	for _, x := range e.ranges {
		fmt.Fprintf(&b, "range %d %x\n", binary.NativeEndian.Uint32(x.k), x.k[4:])
	}
	return b.String()
}
