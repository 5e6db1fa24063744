package policy

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
)

func FuzzParse(f *testing.F) {
	seeds := []string{
		fullPolicy,
		"version: 1\n",
		"",
		"---\n",
		"version: 1\n---\nversion: 1\n",
		"version: 2\n",
		"- 1\n",
		"a: b: c\n",
		"version: 1\nsettings: {log: false, marks: {owned: 0x4, squatted: 0x4}, unprivileged_port_start: 2000}\n",
		"version: 1\nsettings: {table: 9x, allow_root: yes, log: {rate: 0/minute}}\n",
		res("name: a", `ports: [0, "90-80", "80-", http, 65536, 1.5]`, "protocols: [sctp]", "owner: {}"),
		res("name: a", "ports: [1]", `owner: {users: [alice, 4294967295, "5-1"], groups: [voip, nosuch]}`),
		res("name: a", "ports: [1]", "owner: {users: [1]}", `addresses: [nope, "fe80::1%eth0", 192.0.2.1/24, "::ffff:192.0.2.1"]`),
		"version: 1\nreservations:\n  - &r {name: a, ports: [80], owner: {users: [alice]}}\n  - *r\n  - <<: *r\n",
		"version: 1\nreservations:\n  - {name: a, ports: [80], owner: {users: [alice]}}\n  - {name: b, ports: [\"70-90\"], owner: {users: [bob]}, addresses: [192.0.2.1]}\n",
		"version: 1\nx: &a [*a]\n",
		"version: 1\nreservations:\n- name: a\n  ports: [80]\n  owner: {users: [alice]}\n# between\n- name: b\n  ports: [81]\n  owner:\n    groups: [voip]\n",
		"version: 1\r\nreservations:  # the list\r\n\r\n  - {name: a, ports: [80], owner: {users: [1]}}\r\n  - {name: a, ports: [81], owner: {users: [1]}}\r\n",
		"version: 1\nreservations:\n  - name: a\n    description: \"x\n  - y\"\n    ports: [80]\n    owner: {users: [1]}\n",
		"version: 1\nreservations: &a [*a]\n",
		"? [a]\n: b\n",
		"version: !!str 1\nreservations: [{name: !foo a, ports: [!!int x]}]\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		// Parse takes the plain layout's batched shortcut where it can;
		// whatever it takes, it answers as the one-document parse does.
		want, wantErr := parseWhole("fuzz.yaml", data, false)
		if fmt.Sprint(err) != fmt.Sprint(wantErr) || !reflect.DeepEqual(p, want) {
			t.Fatalf("Parse and the whole parse differ:\n%v\n%v\n%+v\n%+v", err, wantErr, p, want)
		}
		if err == nil {
			checkParsed(t, p)
			return
		}
		var errs *Errors
		if !errors.As(err, &errs) || errs.Len() == 0 {
			t.Fatalf("error %v is not a non-empty *Errors", err)
		}
		if len(errs.List) > MaxErrors {
			t.Fatalf("%d errors kept, more than MaxErrors", len(errs.List))
		}
		for _, e := range errs.List {
			if e.Pos.Line < 1 || e.Pos.Col < 1 || e.Pos.File != "fuzz.yaml" {
				t.Errorf("error without a place: %v", e)
			}
		}
	})
}

// checkParsed holds a parsed policy to what Parse promises: every value in
// range, every reservation with a name, ports, protocols and an owner.
func checkParsed(t *testing.T, p *Policy) {
	t.Helper()
	for _, r := range p.Reservations {
		if r.Name == "" || len(r.Ports) == 0 || len(r.Protocols) == 0 || len(r.Users)+len(r.Groups) == 0 {
			t.Fatalf("parsed reservation lacks a part: %+v", r)
		}
		for _, pr := range r.Ports {
			if pr.Lo == 0 || pr.Lo > pr.Hi {
				t.Fatalf("parsed port range %v out of order", pr)
			}
		}
		for _, proto := range r.Protocols {
			if _, ok := proto.Info(); !ok {
				t.Fatalf("parsed unknown protocol %d", proto)
			}
		}
	}
}
