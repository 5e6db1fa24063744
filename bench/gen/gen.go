// Package gen makes the synthetic policies the benchmarks use: N
// reservations of one exact port each (TCP and UDP), plus a few port
// ranges owned by uid ranges, and the same reservations written the naive
// way, one nftables rule per port and protocol.
//
// One reservation, "bench", holds the port the ping-pong runs on and is
// owned by the server's uid; the others are filler that make the sets big.
// Every port is below 32768 so that none is in the default ephemeral range
// (apply would then write net.ipv4.ip_local_reserved_ports) and above 1023
// so that unprivileged_port_start stays out of it.
package gen

import (
	"errors"
	"fmt"
	"strings"

	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/policy"
	"github.com/portfw/portfw/resolve"
)

// Port layout. FillerBase.. holds the exact ports of the filler
// reservations, RangeBase.. the range reservations, RangeWidth ports each.
const (
	FillerBase = 12000
	RangeBase  = 23000
	RangeWidth = 100
	// FillerUIDBase: filler reservation i is owned by uid
	// FillerUIDBase + i%FillerUIDs, so the owner set has realistic repeats.
	FillerUIDBase = 2000
	FillerUIDs    = 1000
	// RangeUIDBase: range reservation j is owned by uids
	// RangeUIDBase+j*RangeWidth .. +RangeWidth-1.
	RangeUIDBase = 100000
)

// Spec describes one synthetic policy.
type Spec struct {
	N      int    // reservations of one exact port, "bench" included; >= 1
	Ranges int    // reservations of one port range owned by a uid range
	Port   uint16 // the measured port, reserved by "bench" for UID
	UID    uint32
	// Single makes each filler reservation one protocol, TCP and UDP in
	// turn on the same port: the port space cannot hold 100k reservations
	// of both. Its ports reach into the default ephemeral range, which the
	// benchmark moves out of the way.
	Single bool
	// Cgroups, when set, makes every reservation owned by the cgroup
	// Cgroups + "/" + its name ("/bench.slice/bench") instead of a uid: the
	// datapath's unit owners. The cgroups must exist (CgroupPaths).
	Cgroups string
}

// CgroupPaths are the cgroups a Spec with Cgroups names, in order.
func (s Spec) CgroupPaths() []string {
	var out []string
	for _, r := range s.Reservations() {
		out = append(out, s.Cgroups+"/"+r.Name)
	}
	return out
}

// Check reports a Spec whose ports would collide or leave the layout.
func (s Spec) Check() error {
	switch {
	case s.N < 1:
		return errors.New("n must be at least 1")
	case s.Single && (s.Ranges > 0 || FillerBase+(s.N-1)/2 > 65535):
		return fmt.Errorf("single: n=%d does not fit above %d, or ranges were asked for", s.N, FillerBase)
	case s.Single:
	case FillerBase+s.N-1 > RangeBase:
		return fmt.Errorf("n=%d: filler ports would run into the ranges at %d", s.N, RangeBase)
	case RangeBase+s.Ranges*RangeWidth > 32768:
		return fmt.Errorf("ranges=%d: ranges would reach the ephemeral range", s.Ranges)
	case s.Port < 1024 || (int(s.Port) >= FillerBase && int(s.Port) < RangeBase+s.Ranges*RangeWidth):
		return fmt.Errorf("port %d collides with the generated ports (%d..%d) or is below 1024",
			s.Port, FillerBase, RangeBase+s.Ranges*RangeWidth-1)
	}
	return nil
}

// Reservation is one generated reservation.
type Reservation struct {
	Name           string
	PortLo, PortHi uint16
	UIDLo, UIDHi   uint32
	Proto          string // "tcp" or "udp"; "" for both
}

// Reservations lists the reservations of s, "bench" first.
func (s Spec) Reservations() []Reservation {
	rs := []Reservation{{"bench", s.Port, s.Port, s.UID, s.UID, ""}}
	for i := 1; i < s.N; i++ {
		p := uint16(FillerBase + i - 1)
		u := uint32(FillerUIDBase + i%FillerUIDs)
		proto := ""
		if s.Single {
			p, proto = uint16(FillerBase+(i-1)/2), []string{"tcp", "udp"}[(i-1)%2]
		}
		rs = append(rs, Reservation{fmt.Sprintf("r%05d", i), p, p, u, u, proto})
	}
	for j := 0; j < s.Ranges; j++ {
		lo := uint16(RangeBase + j*RangeWidth)
		u := uint32(RangeUIDBase + j*RangeWidth)
		rs = append(rs, Reservation{fmt.Sprintf("range%d", j), lo, lo + RangeWidth - 1, u, u + RangeWidth - 1, ""})
	}
	return rs
}

// YAML is the policy file of s. ownerOverride, when non-nil, replaces the
// owner uid of the reservations it names: the reload benchmark edits
// membership this way without changing any rule.
func (s Spec) YAML(ownerOverride map[string]uint32) []byte {
	var b strings.Builder
	// keep: apply must not write sysctls, so that apply times compare with
	// `nft -f` of the same text and nothing outside the table changes.
	b.WriteString("version: 1\nsettings:\n  unprivileged_port_start: keep\nreservations:\n")
	for _, r := range s.Reservations() {
		ports := fmt.Sprint(r.PortLo)
		if r.PortHi != r.PortLo {
			ports = fmt.Sprintf(`"%d-%d"`, r.PortLo, r.PortHi)
		}
		owner := fmt.Sprint(r.UIDLo)
		if r.UIDHi != r.UIDLo {
			owner = fmt.Sprintf(`"%d-%d"`, r.UIDLo, r.UIDHi)
		}
		if u, ok := ownerOverride[r.Name]; ok {
			owner = fmt.Sprint(u)
		}
		protos := ""
		if r.Proto != "" {
			protos = "\n    protocols: [" + r.Proto + "]"
		}
		if s.Cgroups != "" {
			fmt.Fprintf(&b, "  - name: %s\n    ports: [%s]%s\n    owner: { cgroups: [\"%s/%s\"] }\n", r.Name, ports, protos, s.Cgroups, r.Name)
			continue
		}
		fmt.Fprintf(&b, "  - name: %s\n    ports: [%s]%s\n    owner: { users: [%s] }\n", r.Name, ports, protos, owner)
	}
	return []byte(b.String())
}

// Resolved parses and resolves the policy of s, as portfw would.
func (s Spec) Resolved() (*model.Resolved, error) {
	p, err := policy.Parse("bench.yaml", s.YAML(nil))
	if err != nil {
		return nil, err
	}
	return resolve.Resolve(p, resolve.Static{})
}

// Naive is the iptables-guard approach in nft syntax: one rule per port and
// protocol on output, "drop unless the socket's creator is root or the
// owner". Every packet the host sends walks all of them. The table is
// named "naive" so it never touches portfw's.
//
// The owner test is two comparisons, not `meta skuid != { 0, U }`: that
// form makes one anonymous set per rule, and 20k of them took over two
// minutes to load on a 6.18 kernel (0.9 s as written here). Per packet the
// two forms cost the same: a rule whose port does not match stops at its
// first comparison.
func (s Spec) Naive() string {
	var b strings.Builder
	b.WriteString("table inet naive\ndelete table inet naive\ntable inet naive {\n")
	b.WriteString("\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n")
	for _, proto := range []string{"tcp", "udp"} {
		for _, r := range s.Reservations() {
			if r.Proto != "" && r.Proto != proto {
				continue
			}
			ports := fmt.Sprint(r.PortLo)
			if r.PortHi != r.PortLo {
				ports = fmt.Sprintf("%d-%d", r.PortLo, r.PortHi)
			}
			owner := fmt.Sprint(r.UIDLo)
			if r.UIDHi != r.UIDLo {
				owner = fmt.Sprintf("%d-%d", r.UIDLo, r.UIDHi)
			}
			fmt.Fprintf(&b, "\t\t%s sport %s meta skuid != 0 meta skuid != %s drop\n", proto, ports, owner)
		}
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}
