package compiler

import (
	"net/netip"
	"testing"

	"github.com/portfw/portfw/model"
)

// TestDetailString: every part of a plan's line, alone and together, with
// and without the change's signs.
func TestDetailString(t *testing.T) {
	tcp, udp := model.TCP, model.UDP
	web := model.Ports{model.Port(80), {Lo: 8000, Hi: 8099}}
	full := Detail{Name: "all", Action: ActionChange,
		PortsAdded:     []ProtoPorts{{tcp, web}, {udp, model.Ports{model.Port(53)}}, {model.UDPLite, web}},
		PortsRemoved:   []ProtoPorts{{tcp, model.Ports{model.Port(443)}}},
		AddressesAdded: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}, AddressesRemoved: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32")},
		UIDsAdded: []model.IDRange{model.ID(1000), {Lo: 2000, Hi: 2099}}, UIDsRemoved: []model.IDRange{model.ID(3)},
		GIDsAdded: []model.IDRange{model.ID(0)}, GIDsRemoved: []model.IDRange{{Lo: 4000, Hi: 4001}},
		CgroupsAdded: []CgroupRef{{ID: 7, Path: "/system.slice/a.service"}}, CgroupsRemoved: []CgroupRef{{ID: 9}}}
	added := full
	added.Action = ActionAdd
	for _, tc := range []struct {
		d    Detail
		want string
	}{
		{Detail{Name: "bare", Action: ActionChange}, "bare"},
		{Detail{Name: "hand", Action: ActionChange, ElementsAdded: 2, ElementsRemoved: 1}, "hand: the kernel's elements were edited by hand (2 to restore, 1 to remove)"},
		{Detail{Name: "gone", Action: ActionRemove, PortsRemoved: []ProtoPorts{{udp, web}}}, "gone: 80,8000-8099/udp"},
		{Detail{Name: "own", Action: ActionChange, GIDsRemoved: []model.IDRange{model.ID(5)}}, "own: owners -gid 5"},
		{Detail{Name: "addr", Action: ActionChange, AddressesRemoved: []netip.Prefix{netip.MustParsePrefix("::1/128")}, CgroupsAdded: []CgroupRef{{ID: 12}}},
			"addr: addresses -::1/128, owners +cgroup id 12"},
		{full, "all: +80,8000-8099/tcp+udplite, 53/udp, -443/tcp, addresses +10.0.0.0/8 +fd00::/8 -192.0.2.1/32, " +
			"owners +uid 1000,2000-2099 -uid 3 +gid 0 -gid 4000-4001 +cgroup /system.slice/a.service -cgroup id 9"},
		{added, "all: 80,8000-8099/tcp+udplite, 53/udp, 443/tcp, addresses 10.0.0.0/8 fd00::/8 192.0.2.1/32, " +
			"owners uid 1000,2000-2099 uid 3 gid 0 gid 4000-4001 cgroup /system.slice/a.service cgroup id 9"},
	} {
		if got := tc.d.String(); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.d.Name, got, tc.want)
		}
		if got := string(tc.d.AppendTo([]byte("x "))); got != "x "+tc.want {
			t.Errorf("%s appended to %q: %q", tc.d.Name, "x ", got)
		}
	}
}
