package policy

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/portfw/portfw/model"
)

const fullPolicy = `version: 1
settings:
  table: pf_test
  allow_root: false
  unprivileged_port_start: 80
  log: { rate: 5/second }
  marks: { owned: 0x10, squatted: 0x20 }
reservations:
  - name: web
    description: nginx
    ports: [443, 80, "81", "8000-8080", 8081]
    protocols: [tcp]
    owner:
      users: [www-data, 33]
    addresses: [192.0.2.10, "2001:db8::/64", "::ffff:198.51.100.0/120", 192.0.2.0/24]
  - name: sip
    ports: [5060, "5070-5079"]
    owner:
      users: [_sipd, 1001, "1200-1299", "1300"]
      groups: [voip, 200]
`

func TestDefaults(t *testing.T) {
	defaults := model.Settings{
		Table:        "portfw",
		AllowRoot:    true,
		PortStart:    model.PortStart{Mode: model.PortStartAuto},
		Log:          model.LogRate{Count: 10, Unit: model.PerMinute},
		MarkOwned:    0x01000000,
		MarkSquatted: 0x02000000,
		BindGuard:    model.BindGuardAuto,
	}
	with := func(f func(*model.Settings)) model.Settings {
		s := defaults
		f(&s)
		return s
	}
	tests := []struct {
		name, yaml string
		want       model.Settings
	}{
		{"no settings", "version: 1\n", defaults},
		{"empty settings", "version: 1\nsettings:\n", defaults},
		{"empty reservations", "version: 1\nreservations: []\n", defaults},
		{"null reservations", "version: 1\nreservations:\n", defaults},
		{"log true", "version: 1\nsettings: {log: true}\n", defaults},
		{"log empty mapping", "version: 1\nsettings: {log: {}}\n", defaults},
		{"log false", "version: 1\nsettings: {log: false}\n", with(func(s *model.Settings) { s.Log = model.LogRate{} })},
		{"log rate", "version: 1\nsettings: {log: {rate: 3/hour}}\n", with(func(s *model.Settings) { s.Log = model.LogRate{Count: 3, Unit: model.PerHour} })},
		{"log rate spaced", "version: 1\nsettings: {log: {rate: 3 / day}}\n", with(func(s *model.Settings) { s.Log = model.LogRate{Count: 3, Unit: model.PerDay} })},
		{"keep", "version: 1\nsettings: {unprivileged_port_start: keep}\n", with(func(s *model.Settings) { s.PortStart = model.PortStart{Mode: model.PortStartKeep} })},
		{"port start 0", "version: 1\nsettings: {unprivileged_port_start: 0}\n", with(func(s *model.Settings) { s.PortStart = model.PortStart{Mode: model.PortStartFixed, Value: 0} })},
		{"port start 1024", "version: 1\nsettings: {unprivileged_port_start: 1024}\n", with(func(s *model.Settings) { s.PortStart = model.PortStart{Mode: model.PortStartFixed, Value: 1024} })},
		{"one mark", "version: 1\nsettings: {marks: {squatted: 0x4}}\n", with(func(s *model.Settings) { s.MarkSquatted = 4 })},
		{"decimal mark", "version: 1\nsettings: {marks: {owned: 256}}\n", with(func(s *model.Settings) { s.MarkOwned = 256 })},
		{"top bit mark", "version: 1\nsettings: {marks: {owned: 0x8000_0000}}\n", with(func(s *model.Settings) { s.MarkOwned = 0x80000000 })},
		{"allow_root false", "version: 1\nsettings: {allow_root: false}\n", with(func(s *model.Settings) { s.AllowRoot = false })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if diff := cmp.Diff(tt.want, p.Settings); diff != "" {
				t.Errorf("settings mismatch (-want +got):\n%s", diff)
			}
			if len(p.Reservations) != 0 {
				t.Errorf("reservations = %v, want none", p.Reservations)
			}
		})
	}
}

// res wraps lines of one reservation (indented by four spaces) into a
// policy whose reservation starts at line 3, column 5.
func res(lines ...string) string {
	return "version: 1\nreservations:\n  - " + strings.Join(lines, "\n    ") + "\n"
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		// The file as a whole.
		{"not yaml", "version: 1\nreservations:\n  - name: a\n    ports: [80\n",
			`p.yaml:3:1: not valid YAML: did not find expected ',' or ']'`},
		{"not yaml first line", "a: b: c\n",
			`p.yaml:1:1: not valid YAML: mapping values are not allowed in this context`},
		{"tab", "version: 1\nreservations:\n  - name: a\n\tports: [80]\n",
			`p.yaml:3:1: not valid YAML: found a tab character that violates indentation`},
		{"empty file", "", `p.yaml:1:1: empty policy; it must start with "version: 1"`},
		{"only comments", "# nothing yet\n", `p.yaml:1:1: empty policy; it must start with "version: 1"`},
		{"empty document", "---\n", `p.yaml:1:1: empty policy; it must start with "version: 1"`},
		{"two documents", "version: 1\n---\nversion: 1\n",
			`p.yaml:2:1: more than one YAML document; a policy is a single document`},
		{"top level list", "- version: 1\n",
			`p.yaml:1:1: expected a mapping with version, settings and reservations at the top level, got a list`},
		{"top level scalar", "hello\n",
			`p.yaml:1:1: expected a mapping with version, settings and reservations at the top level, got the string "hello"`},

		// version.
		{"missing version", "reservations: []\n", `p.yaml:1:1: version: missing; add "version: 1"`},
		{"version 0", "version: 0\n", `p.yaml:1:10: version: unsupported version 0; only version 1 exists`},
		{"version 2", "version: 2\n", `p.yaml:1:10: version: unsupported version 2; only version 1 exists`},
		{"version one", "version: one\n", `p.yaml:1:10: version: expected the number 1, got the string "one"`},
		{"version quoted", "version: \"1\"\n", `p.yaml:1:10: version: expected the number 1, got the string "1"`},

		// Unknown and repeated keys.
		{"unknown top key", "version: 1\nreservation: []\n",
			`p.yaml:2:1: unknown key "reservation" (did you mean "reservations"?); valid keys are version, settings, reservations`},
		{"unknown settings key", "version: 1\nsettings:\n  tabel: x\n",
			`p.yaml:3:3: settings: unknown key "tabel" (did you mean "table"?); valid keys are table, allow_root, unprivileged_port_start, log, marks, bind_guard`},
		{"unknown log key", "version: 1\nsettings:\n  log: {burst: 5}\n",
			`p.yaml:3:9: settings.log: unknown key "burst"; valid keys are rate`},
		{"unknown marks key", "version: 1\nsettings:\n  marks: {own: 1}\n",
			`p.yaml:3:11: settings.marks: unknown key "own" (did you mean "owned"?); valid keys are owned, squatted`},
		{"unknown reservation key", res("name: a", "ports: [1]", "owner: {users: [1]}", "proto: [tcp]"),
			`p.yaml:6:5: reservations[0]: unknown key "proto"; valid keys are name, description, ports, protocols, owner, addresses`},
		{"unknown owner key", res("name: a", "ports: [1]", "owner: {users: [1], grups: [b]}"),
			`p.yaml:5:25: reservations[0].owner: unknown key "grups" (did you mean "groups"?); valid keys are users, groups, units, cgroups`},
		{"duplicate key", res("name: a", "ports: [1]", "owner: {users: [1]}", "ports: [2]"),
			`p.yaml:6:5: reservations[0]: duplicate key "ports" (first at line 4)`},
		{"merge key", "version: 1\nreservations:\n  - &a {name: a, ports: [1], owner: {users: [1]}}\n  - <<: *a\n    name: b\n",
			`p.yaml:4:5: reservations[1]: merge keys (<<) are not supported; write the fields out`},

		// Wrong types.
		{"ports scalar", res("name: a", `ports: "80"`, "owner: {users: [1]}"),
			`p.yaml:4:12: reservations[0].ports: expected a list of ports such as [80, "8000-8080"], got the string "80"`},
		{"allow_root quoted", "version: 1\nsettings:\n  allow_root: \"yes\"\n",
			`p.yaml:3:15: settings.allow_root: expected true or false, got the string "yes"`},
		{"allow_root yes", "version: 1\nsettings:\n  allow_root: yes\n",
			`p.yaml:3:15: settings.allow_root: expected true or false, got the string "yes"`},
		{"allow_root number", "version: 1\nsettings:\n  allow_root: 1\n",
			`p.yaml:3:15: settings.allow_root: expected true or false, got the number 1`},
		{"settings list", "version: 1\nsettings: [a]\n",
			`p.yaml:2:11: settings: expected a mapping of settings, got a list`},
		{"reservations mapping", "version: 1\nreservations: {a: 1}\n",
			`p.yaml:2:15: reservations: expected a list of reservations, got a mapping`},
		{"reservation scalar", "version: 1\nreservations: [web]\n",
			`p.yaml:2:16: reservations[0]: expected a reservation (a mapping with name, ports and owner), got the string "web"`},
		{"owner list", res("name: a", "ports: [1]", "owner: [alice]"),
			`p.yaml:5:12: reservations[0].owner: expected a mapping with users, groups, units and/or cgroups, got a list`},
		// Units and cgroups.
		{"unit without type", res("name: a", "ports: [1]", "owner: {units: [nginx]}"),
			`p.yaml:5:21: reservations[0].owner.units[0]: invalid unit name "nginx"; name a unit with its type, such as nginx.service (types: service, socket, scope, slice, mount, swap)`},
		{"unit two @", res("name: a", "ports: [1]", "owner: {units: [a@b@c.service]}"),
			`p.yaml:5:21: reservations[0].owner.units[0]: invalid unit name "a@b@c.service"; at most one @ (a template's instance)`},
		{"unit bad character", res("name: a", "ports: [1]", "owner: {units: [\"my app.service\"]}"),
			`p.yaml:5:21: reservations[0].owner.units[0]: invalid unit name "my app.service": the character ' ' is not allowed in a unit name`},
		{"unit pattern unbalanced", res("name: a", "ports: [1]", "owner: {units: [\"app[.service\"]}"),
			`p.yaml:5:21: reservations[0].owner.units[0]: invalid unit pattern "app[.service": unbalanced [ ]`},
		{"unit number", res("name: a", "ports: [1]", "owner: {units: [5]}"),
			`p.yaml:5:21: reservations[0].owner.units[0]: expected a string, got the number 5`},
		{"cgroup relative", res("name: a", "ports: [1]", "owner: {cgroups: [system.slice/x.service]}"),
			`p.yaml:5:23: reservations[0].owner.cgroups[0]: cgroup path "system.slice/x.service" is relative; write it from the cgroup v2 hierarchy's root, such as "/system.slice/x.service"`},
		{"cgroup dotdot", res("name: a", "ports: [1]", "owner: {cgroups: [/a.slice/../b]}"),
			`p.yaml:5:23: reservations[0].owner.cgroups[0]: cgroup path "/a.slice/../b" holds ".."; write it without . and ..`},
		{"cgroup mount point", res("name: a", "ports: [1]", "owner: {cgroups: [/sys/fs/cgroup/unified/x.slice]}"),
			`p.yaml:5:23: reservations[0].owner.cgroups[0]: cgroup path "/sys/fs/cgroup/unified/x.slice" names the mount point; write the path from the cgroup v2 hierarchy's root, such as "/x.slice"`},
		{"cgroup root", res("name: a", "ports: [1]", "owner: {cgroups: [/]}"),
			`p.yaml:5:23: reservations[0].owner.cgroups[0]: the root cgroup holds every process: it cannot own a port`},
		{"cgroup trailing slash", res("name: a", "ports: [1]", "owner: {cgroups: [/a/]}"),
			`p.yaml:5:23: reservations[0].owner.cgroups[0]: cgroup path "/a/" has an empty component (// or a trailing /)`},
		{"cgroup too deep", res("name: a", "ports: [1]", "owner: {cgroups: [/1/2/3/4/5/6/7/8/9]}"),
			`p.yaml:5:23: reservations[0].owner.cgroups[0]: cgroup path "/1/2/3/4/5/6/7/8/9" is 9 levels deep; portfw matches cgroups at most 8 levels below the root`},
		{"units empty lists", res("name: a", "ports: [1]", "owner: {units: [], cgroups: []}"),
			`p.yaml:5:12: reservations[0].owner: empty; list at least one user, group, unit or cgroup`},
		{"users scalar", res("name: a", "ports: [1]", "owner: {users: alice}"),
			`p.yaml:5:20: reservations[0].owner.users: expected a list of user names, uids or uid ranges, got the string "alice"`},
		{"user bool", res("name: a", "ports: [1]", "owner: {users: [true]}"),
			`p.yaml:5:21: reservations[0].owner.users[0]: expected a user name, uid or uid range, got true`},
		{"port list in list", res("name: a", "ports: [[1]]", "owner: {users: [1]}"),
			`p.yaml:4:13: reservations[0].ports[0]: expected a port or a range such as "8000-8080", got a list`},
		{"table number", "version: 1\nsettings: {table: 5}\n",
			`p.yaml:2:19: settings.table: expected a table name, got the number 5`},
		{"log string", "version: 1\nsettings: {log: on}\n",
			`p.yaml:2:17: settings.log: expected true, false or a mapping with rate, got the string "on"`},
		{"rate number", "version: 1\nsettings: {log: {rate: 10}}\n",
			`p.yaml:2:24: settings.log.rate: expected a rate N/second, N/minute, N/hour or N/day, got the number 10`},
		{"description list", res("name: a", "description: [x]", "ports: [1]", "owner: {users: [1]}"),
			`p.yaml:4:18: reservations[0].description: expected a string, got a list`},

		// Ports.
		{"port 0", res("name: a", "ports: [0]", "owner: {users: [1]}"),
			`p.yaml:4:13: reservations[0].ports[0]: port 0 is out of range 1..65535`},
		{"port 65536", res("name: a", "ports: [80, 65536]", "owner: {users: [1]}"),
			`p.yaml:4:17: reservations[0].ports[1]: port 65536 is out of range 1..65535`},
		{"port huge", res("name: a", "ports: [99999999999999999999]", "owner: {users: [1]}"),
			`p.yaml:4:13: reservations[0].ports[0]: port 99999999999999999999 is out of range 1..65535`},
		{"port negative", res("name: a", "ports: [-1]", "owner: {users: [1]}"),
			`p.yaml:4:13: reservations[0].ports[0]: port -1 is out of range 1..65535`},
		{"port range above max", res("name: a", `ports: ["65000-70000"]`, "owner: {users: [1]}"),
			`p.yaml:4:13: reservations[0].ports[0]: port 70000 is out of range 1..65535`},
		{"port name", res("name: a", "ports: [http]", "owner: {users: [1]}"),
			`p.yaml:4:13: reservations[0].ports[0]: "http" is not a port number or LO-HI range`},
		{"port float", res("name: a", "ports: [80.5]", "owner: {users: [1]}"),
			`p.yaml:4:13: reservations[0].ports[0]: "80.5" is not a port number or LO-HI range`},
		{"reversed range", res("name: a", `ports: [80, "90-80"]`, "owner: {users: [1]}"),
			`p.yaml:4:17: reservations[0].ports[1]: reversed port range "90-80"; write the lower port first`},
		{"malformed range", res("name: a", `ports: ["80-"]`, "owner: {users: [1]}"),
			`p.yaml:4:13: reservations[0].ports[0]: invalid port range "80-"; write it as LO-HI`},
		{"missing ports", res("name: a", "owner: {users: [1]}"),
			`p.yaml:3:5: reservations[0].ports: missing; list the reserved ports, e.g. ports: [80, "8000-8080"]`},
		{"empty ports", res("name: a", "ports: []", "owner: {users: [1]}"),
			`p.yaml:4:12: reservations[0].ports: empty; list at least one port`},

		// Protocols.
		{"bad protocol", res("name: a", "ports: [1]", "protocols: [tcp, sctp]", "owner: {users: [1]}"),
			`p.yaml:5:22: reservations[0].protocols[1]: unknown protocol "sctp"; valid protocols are tcp, udp and udplite`},
		{"empty protocols", res("name: a", "ports: [1]", "protocols: []", "owner: {users: [1]}"),
			`p.yaml:5:16: reservations[0].protocols: empty; list some of tcp, udp and udplite, or leave protocols out for tcp and udp`},

		// Owners.
		{"missing owner", res("name: a", "ports: [1]"),
			`p.yaml:3:5: reservations[0].owner: missing; every reservation needs an owner with users, groups, units or cgroups`},
		{"empty owner mapping", res("name: a", "ports: [1]", "owner: {}"),
			`p.yaml:5:12: reservations[0].owner: empty; list at least one user, group, unit or cgroup`},
		{"empty owner lists", res("name: a", "ports: [1]", "owner: {users: [], groups: []}"),
			`p.yaml:5:12: reservations[0].owner: empty; list at least one user, group, unit or cgroup`},
		{"null owner", res("name: a", "ports: [1]", "owner:"),
			`p.yaml:5:11: reservations[0].owner: empty; list at least one user, group, unit or cgroup`},
		{"uid too big", res("name: a", "ports: [1]", "owner: {users: [4294967295]}"),
			`p.yaml:5:21: reservations[0].owner.users[0]: uid 4294967295 is out of range 0..4294967294`},
		{"gid range too big", res("name: a", "ports: [1]", `owner: {groups: ["1-4294967295"]}`),
			`p.yaml:5:22: reservations[0].owner.groups[0]: gid 4294967295 is out of range 0..4294967294`},
		{"reversed uid range", res("name: a", "ports: [1]", `owner: {users: ["20-10"]}`),
			`p.yaml:5:21: reservations[0].owner.users[0]: reversed uid range "20-10"; write the lower uid first`},
		{"reversed gid range", res("name: a", "ports: [1]", "owner: {groups: [20-10]}"),
			`p.yaml:5:22: reservations[0].owner.groups[0]: reversed gid range "20-10"; write the lower gid first`},
		{"malformed uid range", res("name: a", "ports: [1]", "owner: {users: [1000-]}"),
			`p.yaml:5:21: reservations[0].owner.users[0]: invalid uid range "1000-"; write it as LO-HI`},
		{"negative uid", res("name: a", "ports: [1]", "owner: {users: [-1]}"),
			`p.yaml:5:21: reservations[0].owner.users[0]: uid -1 is out of range 0..4294967294`},
		{"bad user name", res("name: a", "ports: [1]", `owner: {users: ["a:b"]}`),
			`p.yaml:5:21: reservations[0].owner.users[0]: invalid user name "a:b"`},

		// Names.
		{"missing name", res("ports: [1]", "owner: {users: [1]}"),
			`p.yaml:3:5: reservations[0].name: missing; every reservation needs a name`},
		{"invalid name", res("name: 1st", "ports: [1]", "owner: {users: [1]}"),
			`p.yaml:3:11: reservations[0].name: invalid name "1st"; use a letter then up to 63 letters, digits, _, . or -`},
		{"name not string", res("name: [a]", "ports: [1]", "owner: {users: [1]}"),
			`p.yaml:3:11: reservations[0].name: expected a name, got a list`},
		{"duplicate name", "version: 1\nreservations:\n  - name: a\n    ports: [1]\n    owner: {users: [1]}\n  - name: a\n    ports: [2]\n    owner: {users: [1]}\n",
			`p.yaml:6:11: reservations[1].name: duplicate reservation name "a" (first at line 3, reservations[0])`},

		// Addresses.
		{"not an address", res("name: a", "ports: [1]", "owner: {users: [1]}", "addresses: [localhost]"),
			`p.yaml:6:17: reservations[0].addresses[0]: "localhost" is not an IP address or prefix`},
		{"bad prefix", res("name: a", "ports: [1]", "owner: {users: [1]}", "addresses: [192.0.2.0/33]"),
			`p.yaml:6:17: reservations[0].addresses[0]: "192.0.2.0/33" is not an IP address or prefix`},
		{"zone", res("name: a", "ports: [1]", "owner: {users: [1]}", `addresses: ["fe80::1%eth0"]`),
			`p.yaml:6:17: reservations[0].addresses[0]: "fe80::1%eth0" has a zone; zones are not allowed, write the address without %zone`},
		{"host bits", res("name: a", "ports: [1]", "owner: {users: [1]}", "addresses: [192.0.2.1/24]"),
			`p.yaml:6:17: reservations[0].addresses[0]: "192.0.2.1/24" has host bits set; write 192.0.2.0/24 for the network or 192.0.2.1 for the single address`},
		{"host bits v6", res("name: a", "ports: [1]", "owner: {users: [1]}", `addresses: ["2001:db8::1/64"]`),
			`p.yaml:6:17: reservations[0].addresses[0]: "2001:db8::1/64" has host bits set; write 2001:db8::/64 for the network or 2001:db8::1 for the single address`},
		{"address number", res("name: a", "ports: [1]", "owner: {users: [1]}", "addresses: [10]"),
			`p.yaml:6:17: reservations[0].addresses[0]: expected an IP address or prefix, got the number 10`},
		{"empty addresses", res("name: a", "ports: [1]", "owner: {users: [1]}", "addresses: []"),
			`p.yaml:6:16: reservations[0].addresses: empty; leave addresses out to cover every address`},

		// Settings values.
		{"table name", "version: 1\nsettings:\n  table: 9lives\n",
			`p.yaml:3:10: settings.table: invalid table name "9lives"; use a letter then up to 31 letters, digits or _`},
		{"table too long", "version: 1\nsettings:\n  table: " + strings.Repeat("t", 33) + "\n",
			`p.yaml:3:10: settings.table: invalid table name "` + strings.Repeat("t", 33) + `"; use a letter then up to 31 letters, digits or _`},
		{"port start 1025", "version: 1\nsettings:\n  unprivileged_port_start: 1025\n",
			`p.yaml:3:28: settings.unprivileged_port_start: 1025 is out of range 0..1024`},
		{"port start negative", "version: 1\nsettings:\n  unprivileged_port_start: -1\n",
			`p.yaml:3:28: settings.unprivileged_port_start: expected auto, keep or a number 0..1024, got the number -1`},
		{"port start word", "version: 1\nsettings:\n  unprivileged_port_start: soon\n",
			`p.yaml:3:28: settings.unprivileged_port_start: expected auto, keep or a number 0..1024, got the string "soon"`},
		{"rate unit", "version: 1\nsettings:\n  log: {rate: 10/fortnight}\n",
			`p.yaml:3:15: settings.log.rate: invalid rate "10/fortnight": use N/second, N/minute, N/hour or N/day`},
		{"rate no slash", "version: 1\nsettings:\n  log: {rate: fast}\n",
			`p.yaml:3:15: settings.log.rate: invalid rate "fast": use N/second, N/minute, N/hour or N/day`},
		{"rate zero", "version: 1\nsettings:\n  log: {rate: 0/minute}\n",
			`p.yaml:3:15: settings.log.rate: invalid rate "0/minute": the count must be at least 1`},
		{"rate word", "version: 1\nsettings:\n  log: {rate: ten/minute}\n",
			`p.yaml:3:15: settings.log.rate: invalid rate "ten/minute": the count must be a whole number`},
		{"mark two bits", "version: 1\nsettings:\n  marks: {owned: 3}\n",
			`p.yaml:3:18: settings.marks.owned: 3 is not a single bit of the 32-bit conntrack mark; use a power of two such as 0x01000000`},
		{"mark zero", "version: 1\nsettings:\n  marks: {squatted: 0}\n",
			`p.yaml:3:21: settings.marks.squatted: 0 is not a single bit of the 32-bit conntrack mark; use a power of two such as 0x01000000`},
		{"mark too wide", "version: 1\nsettings:\n  marks: {owned: 0x100000000}\n",
			`p.yaml:3:18: settings.marks.owned: 0x100000000 is not a single bit of the 32-bit conntrack mark; use a power of two such as 0x01000000`},
		{"marks equal", "version: 1\nsettings:\n  marks: {owned: 0x4, squatted: 0x4}\n",
			`p.yaml:3:33: settings.marks.squatted: owned and squatted must be different bits (both are 0x00000004)`},
		{"mark equals default", "version: 1\nsettings:\n  marks: {owned: 0x02000000}\n",
			`p.yaml:3:18: settings.marks.owned: owned and squatted must be different bits (both are 0x02000000)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded with %+v, want error %q", p, tt.want)
			}
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error %T is not *Errors: %v", err, err)
			}
			if !slicesContainsLine(err.Error(), tt.want) {
				t.Errorf("Parse error:\n%v\nwant a line:\n%s", err, tt.want)
			}
		})
	}
}

func slicesContainsLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if l == line {
			return true
		}
	}
	return false
}

func TestParseReportsAll(t *testing.T) {
	const yaml = `version: 1
settings:
  allow_root: yes
reservations:
  - name: a
    ports: [0]
    owner: {users: [alice]}
  - name: b
    ports: [1]
    protocols: [icmp]
    owner: {users: [alice]}
`
	_, err := Parse("p.yaml", []byte(yaml))
	var errs *Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Parse error = %v, want *Errors", err)
	}
	want := []string{
		`p.yaml:3:15: settings.allow_root: expected true or false, got the string "yes"`,
		`p.yaml:6:13: reservations[0].ports[0]: port 0 is out of range 1..65535`,
		`p.yaml:10:17: reservations[1].protocols[0]: unknown protocol "icmp"; valid protocols are tcp, udp and udplite`,
	}
	var got []string
	for _, e := range errs.List {
		got = append(got, e.Error())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("errors mismatch (-want +got):\n%s", diff)
	}
	if err.Error() != strings.Join(want, "\n") {
		t.Errorf("Errors.Error() = %q, want one error per line", err.Error())
	}
}

func TestErrorFormat(t *testing.T) {
	e := &Error{Pos: model.Pos{File: "p.yaml", Line: 1, Col: 2}, Msg: "empty policy"}
	if got, want := e.Error(), "p.yaml:1:2: empty policy"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	e.Field = "version"
	if got, want := e.Error(), "p.yaml:1:2: version: empty policy"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestAliases(t *testing.T) {
	const yaml = `version: 1
owners: &web {users: [www-data]}
reservations:
  - name: a
    ports: [80]
    owner: *web
`
	// Aliases work, but an anchor needs a home, and unknown keys are errors.
	_, err := Parse("p.yaml", []byte(yaml))
	if err == nil || !strings.Contains(err.Error(), `p.yaml:2:1: unknown key "owners"`) {
		t.Errorf("Parse error = %v, want unknown key owners", err)
	}
	const ok = `version: 1
reservations:
  - name: a
    ports: [80]
    owner: &web {users: [www-data]}
  - name: b
    ports: [443]
    owner: *web
`
	p, err := Parse("p.yaml", []byte(ok))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if got := p.Reservations[1].Users; len(got) != 1 || got[0].Name != "www-data" {
		t.Errorf("b's users = %+v, want www-data", got)
	}
}

func TestAliasBomb(t *testing.T) {
	// Each level doubles; without the guard walking it would take ages.
	var b strings.Builder
	b.WriteString("version: 1\nx0: &a0 [" + strings.Repeat("1,", 1000) + "1]\n")
	for i := 1; i < 30; i++ {
		b.WriteString("x" + strconv.Itoa(i) + ": &a" + strconv.Itoa(i) + " [*a" + strconv.Itoa(i-1) + ", *a" + strconv.Itoa(i-1) + "]\n")
	}
	b.WriteString("reservations:\n  - {name: a, ports: *a29, owner: {users: [1]}}\n")
	_, err := Parse("p.yaml", []byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "anchors and aliases expand to") {
		t.Errorf("Parse error = %v, want the alias guard", err)
	}
}

// TestFieldPath: a path made in pieces reads as the one written out,
// however deep it goes.
func TestFieldPath(t *testing.T) {
	r := pathOf("reservations").at(3)
	for _, tc := range []struct {
		p    fieldPath
		want string
	}{
		{pathOf(""), ""},
		{pathOf("settings.log.rate"), "settings.log.rate"},
		{r, "reservations[3]"},
		{r.dot(".name"), "reservations[3].name"},
		{r.dot(".ports").at(0), "reservations[3].ports[0]"},
		{r.dot(".owner").dot(".users").at(12), "reservations[3].owner.users[12]"},
		{r.dot(".owner").dot(".users").at(12).dot(".x").at(1), "reservations[3].owner.users[12].x[1]"},
		{r.dot(".owner").dot(".users").dot(".deeper"), "reservations[3].owner.users.deeper"},
		{pathOf("a").at(1).at(2), "a[1][2]"},
		{pathOf("a").dot(".b").at(1).at(2), "a.b[1][2]"},
	} {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("%+v reads %q, want %q", tc.p, got, tc.want)
		}
	}
}
