package testenv

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Veth is the name of the veth end in each namespace of a Pair.
const Veth = "veth0"

// Pair is two namespaces joined by a veth pair: a server side and a client
// side, each with one IPv4 and one IPv6 documentation address on Veth.
type Pair struct {
	Server, Client     *NS
	ServerV4, ClientV4 netip.Addr // 192.0.2.1, 192.0.2.2
	ServerV6, ClientV6 netip.Addr // 2001:db8::1, 2001:db8::2
}

// NewPair creates a Pair and returns once both ends are up and every address
// is usable.
func NewPair(t testing.TB) *Pair {
	t.Helper()
	p := &Pair{
		Server:   NewNS(t),
		Client:   NewNS(t),
		ServerV4: netip.MustParseAddr("192.0.2.1"),
		ClientV4: netip.MustParseAddr("192.0.2.2"),
		ServerV6: netip.MustParseAddr("2001:db8::1"),
		ClientV6: netip.MustParseAddr("2001:db8::2"),
	}
	// Creating both ends directly inside the namespaces means no name is
	// ever taken in the host namespace, where parallel tests would collide.
	if _, stderr, err := run(nil, "ip", "link", "add", Veth, "netns", p.Server.Name,
		"type", "veth", "peer", "name", Veth, "netns", p.Client.Name); err != nil {
		t.Fatalf("add veth: %v: %s", err, stderr)
	}
	for _, end := range []struct {
		ns     *NS
		v4, v6 netip.Addr
	}{{p.Server, p.ServerV4, p.ServerV6}, {p.Client, p.ClientV4, p.ClientV6}} {
		// nodad: duplicate address detection would keep the address
		// tentative, unusable, for about a second.
		batch := strings.Join([]string{
			"addr add " + end.v4.String() + "/24 dev " + Veth,
			"addr add " + end.v6.String() + "/64 dev " + Veth + " nodad",
			"link set " + Veth + " up",
		}, "\n")
		if _, stderr, err := run([]byte(batch), "ip", "-n", end.ns.Name, "-batch", "-"); err != nil {
			t.Fatalf("configure %s: %v: %s", end.ns.Name, err, stderr)
		}
	}
	waitUsable(t, p.Server, p.ServerV4, p.ServerV6)
	waitUsable(t, p.Client, p.ClientV4, p.ClientV6)
	return p
}

// waitUsable polls the link state instead of pinging: a veth end reports UP
// only once its peer is up too, and the addresses must be neither missing
// nor tentative.
func waitUsable(t testing.TB, ns *NS, addrs ...netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var last string
	for {
		out := ns.IP(t, "-j", "addr", "show", "dev", Veth)
		if usable(out, addrs) {
			return
		}
		last = out
		if time.Now().After(deadline) {
			t.Fatalf("%s in %s not usable after 5s: %s", Veth, ns.Name, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func usable(ipJSON string, addrs []netip.Addr) bool {
	var links []struct {
		Operstate string `json:"operstate"`
		AddrInfo  []struct {
			Local     string `json:"local"`
			Tentative bool   `json:"tentative"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(ipJSON), &links); err != nil || len(links) != 1 || links[0].Operstate != "UP" {
		return false
	}
	for _, a := range addrs {
		found := false
		for _, ai := range links[0].AddrInfo {
			if ai.Local == a.String() && !ai.Tentative {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}
