package compiler

import (
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Summary describes one reservation as a ruleset holds it: enough for
// `portfw status` to explain the kernel's table without the policy file.
type Summary struct {
	Name           string   `json:"name"`
	Ports          []string `json:"ports"`          // "80,443/tcp", "5060,5070-5079/tcp+udp", "80/tcp@192.0.2.10"
	UIDs           []string `json:"uids,omitempty"` // "33", "1200-1299"
	GIDs           []string `json:"gids,omitempty"`
	DroppedPackets uint64   `json:"dropped_packets"`
	DroppedBytes   uint64   `json:"dropped_bytes"`
}

// Summarize lists the reservations in rs, sorted by name. Counters come
// from the drop sets, so they are non-zero only for a ruleset read back
// from the kernel.
func Summarize(rs *Ruleset) []Summary {
	by := map[string]*Summary{}
	get := func(name string) *Summary {
		if by[name] == nil {
			by[name] = &Summary{Name: name}
		}
		return by[name]
	}
	// ports[name][address][protocol] lists port texts in element order.
	ports := map[string]map[string]map[string][]string{}
	for _, s := range rs.Sets {
		for _, e := range s.Elements {
			sum := get(e.Comment)
			switch {
			case s.Counter:
				sum.DroppedPackets += e.Packets
				sum.DroppedBytes += e.Bytes
			case s.Has(FieldUID):
				sum.UIDs = appendUniq(sum.UIDs, e.ID.String())
			case s.Has(FieldGID):
				sum.GIDs = appendUniq(sum.GIDs, e.ID.String())
			default:
				a := ""
				if e.Addr.IsValid() {
					a = "@" + e.Addr.String()
					if e.Addr.IsSingleIP() {
						a = "@" + e.Addr.Addr().String()
					}
				}
				if ports[sum.Name] == nil {
					ports[sum.Name] = map[string]map[string][]string{}
				}
				if ports[sum.Name][a] == nil {
					ports[sum.Name][a] = map[string][]string{}
				}
				byProto := ports[sum.Name][a]
				byProto[string(e.Proto)] = appendUniq(byProto[string(e.Proto)], e.Ports.String())
			}
		}
	}
	out := make([]Summary, 0, len(by))
	for name, s := range by {
		addrs := make([]string, 0, len(ports[name]))
		for a := range ports[name] {
			addrs = append(addrs, a)
		}
		sort.Strings(addrs)
		for _, a := range addrs {
			s.Ports = append(s.Ports, portsText(ports[name][a], a)...)
		}
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func appendUniq(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// portsText writes the ports of one address per protocol, and once for
// both when TCP and UDP have the same ports: "5060,5070-5079/tcp+udp".
func portsText(byProto map[string][]string, addr string) []string {
	for _, ps := range byProto {
		sort.Slice(ps, func(i, j int) bool { return portLo(ps[i]) < portLo(ps[j]) })
	}
	tcp, udp := strings.Join(byProto["tcp"], ","), strings.Join(byProto["udp"], ",")
	switch {
	case tcp != "" && tcp == udp:
		return []string{tcp + "/tcp+udp" + addr}
	case tcp != "" && udp != "":
		return []string{tcp + "/tcp" + addr, udp + "/udp" + addr}
	case tcp != "":
		return []string{tcp + "/tcp" + addr}
	case udp != "":
		return []string{udp + "/udp" + addr}
	}
	return nil
}

func portLo(s string) int {
	lo, _, _ := strings.Cut(s, "-")
	n, _ := strconv.Atoi(lo)
	return n
}
