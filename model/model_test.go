package model

import (
	"encoding/json"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
)

func TestPorts(t *testing.T) {
	got, err := ParsePorts("8081, 30000-30999,8080\n")
	if err != nil || got.String() != "8080-8081,30000-30999" {
		t.Fatalf("ParsePorts = %v, %v", got, err)
	}
	for _, bad := range []string{"x", "10-5", "70000", "1-"} {
		if _, err := ParsePorts(bad); err == nil {
			t.Errorf("ParsePorts(%q) succeeded", bad)
		}
	}
	a := NewPorts(PortRange{10, 20}, PortRange{30, 40})
	b := NewPorts(PortRange{15, 35})
	for _, tc := range []struct{ name, got, want string }{
		{"minus", a.Minus(b).String(), "10-14,36-40"},
		{"intersect", a.Intersect(b).String(), "15-20,30-35"},
		{"union", a.Union(b).String(), "10-40"},
		{"empty", Ports(nil).String(), ""},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %q, want %q", tc.name, tc.got, tc.want)
		}
	}
	if n := a.Count(); n != 22 {
		t.Errorf("Count = %d", n)
	}
	var back Ports
	if b, _ := json.Marshal(a); string(b) != `"10-20,30-40"` || json.Unmarshal(b, &back) != nil || back.String() != a.String() {
		t.Errorf("JSON round trip: %s -> %v", b, back)
	}
}

func TestExactIDs(t *testing.T) {
	got := ExactIDs([]IDRange{{5, 5}, {3, 4}, {4, 6}, {10, 10}, {11, 11}})
	want := []IDRange{{3, 6}, {10, 10}, {11, 11}} // touching ones stay apart
	if len(got) != len(want) {
		t.Fatalf("ExactIDs = %v", got)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("ExactIDs = %v, want %v", got, want)
		}
	}
	if m := MergeIDs(got); len(m) != 2 || m[0] != (IDRange{3, 6}) || m[1] != (IDRange{10, 11}) {
		t.Errorf("MergeIDs = %v, want 3-6 10-11 (touching ones merged)", m)
	}
}

func TestOwners(t *testing.T) {
	o := Owners{Root: true, UIDs: []IDRange{{1000, 1000}}, GIDs: []IDRange{{20, 29}}}
	for _, tc := range []struct {
		uid, gid uint32
		want     bool
	}{{0, 1, true}, {1000, 1, true}, {1001, 1, false}, {1001, 25, true}} {
		if got := o.HasUID(tc.uid) || o.HasGID(tc.gid); got != tc.want {
			t.Errorf("uid %d gid %d: owner=%v, want %v", tc.uid, tc.gid, got, tc.want)
		}
	}
	if !o.Equal(Owners{UIDs: []IDRange{{0, 0}, {1000, 1000}}, GIDs: []IDRange{{20, 24}, {25, 29}}}) {
		t.Error("Equal: root as a flag and uid 0 listed own the same sockets")
	}
	if (Owners{Root: true}).NonRoot() || !o.NonRoot() {
		t.Error("NonRoot")
	}
}

func TestProtocolTable(t *testing.T) {
	for _, p := range Protocols() {
		got, ok := ProtocolByName(p.Name)
		if !ok || got != p.Protocol || p.Protocol.String() != p.Name {
			t.Errorf("%s: by name %v %v, String %q", p.Name, got, ok, p.Protocol.String())
		}
		var back Protocol
		b, _ := json.Marshal(p.Protocol)
		if json.Unmarshal(b, &back) != nil || back != p.Protocol {
			t.Errorf("%s: JSON %s -> %v", p.Name, b, back)
		}
	}
	if _, ok := ProtocolByName("sctp"); ok {
		t.Error("sctp is not in the table: its bind never reaches the cgroup hook")
	}
	if Protocol(99).String() != "99" {
		t.Errorf("an unknown protocol prints as %q", Protocol(99).String())
	}
	if got := ProtocolNames(); got != "tcp, udp and udplite" {
		t.Errorf("ProtocolNames = %q", got)
	}
}

func TestSettingsText(t *testing.T) {
	if s := DefaultLog.String(); s != "10/minute" {
		t.Errorf("DefaultLog = %q", s)
	}
	if (LogRate{}).Enabled() {
		t.Error("the zero rate logs")
	}
	for ps, want := range map[PortStart]string{{Mode: PortStartAuto}: "auto", {Mode: PortStartKeep}: "keep", {Mode: PortStartFixed, Value: 80}: "80"} {
		if ps.String() != want {
			t.Errorf("%+v = %q", ps, ps.String())
		}
	}
}

func TestUnitTypeAndSliceTree(t *testing.T) {
	for name, want := range map[string]string{"nginx.service": "service", "user.slice": "slice", "a@1.socket": "socket",
		"x.target": "", "service": "", ".service": "", "pfw-test-1.2-ab": ""} {
		if got := UnitType(name); got != want {
			t.Errorf("UnitType(%q) = %q, want %q", name, got, want)
		}
	}
	for path, want := range map[string]bool{"/": true, "/system.slice": true, "/user.slice/user-1000.slice": true,
		"/system.slice/nginx.service": false, "/machine.slice/x.scope": false, "/pfw-test-1": false,
		"/1.slice/2.slice/3.slice/4.slice/5.slice/6.slice/7.slice":         true,
		"/1.slice/2.slice/3.slice/4.slice/5.slice/6.slice/7.slice/8.slice": false} {
		if got := SliceTree(path); got != want {
			t.Errorf("SliceTree(%q) = %v, want %v", path, got, want)
		}
	}
}

// TestPermute: in place, as a copy in idx's order would be.
func TestPermute(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 2, 5, 100} {
		s := make([]string, n)
		for i := range s {
			s[i] = strconv.Itoa(i)
		}
		idx := make([]int32, n)
		for i, j := range r.Perm(n) {
			idx[i] = int32(j)
		}
		want := make([]string, n)
		for k, i := range idx {
			want[k] = s[i]
		}
		Permute(s, idx)
		if !slices.Equal(s, want) {
			t.Fatalf("%d: %v, want %v", n, s, want)
		}
	}
}
