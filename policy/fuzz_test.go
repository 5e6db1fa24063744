package policy

import (
	"errors"
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
		"version: 1\nreservations: &a [*a]\n",
		"? [a]\n: b\n",
		"version: !!str 1\nreservations: [{name: !foo a, ports: [!!int x]}]\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err == nil {
			_, err = Resolve(p, testResolver)
			if err == nil {
				return
			}
		}
		var errs Errors
		if !errors.As(err, &errs) || len(errs) == 0 {
			t.Fatalf("error %v is not a non-empty Errors", err)
		}
		for _, e := range errs {
			if e.Pos.Line < 1 || e.Pos.Col < 1 || e.Pos.File != "fuzz.yaml" {
				t.Errorf("error without a place: %v", e)
			}
		}
	})
}
