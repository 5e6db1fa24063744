package policy

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// scanSeeds are items scanItem takes, and some it must not.
var scanSeeds = append(basePolicy(4), // every style of the reparse tests
	"  - name: web  # c\n    ports: [80, \"5070-5079\"]\n    owner:\n      users: [www-data]\n",
	"- { name: r2, ports: [1], owner: {groups: [3]} }\n",
	"  - name: web\n    description: the web server's ports belong to www-data, who binds 80 without root\n    ports: [80, 8080, 8443]\n    protocols: [tcp]\n    owner:\n      users: [www-data]\n",
	"  - name: a\n    description: 'it''s'\n    ports: [1]\n    owner: {users: [1]}\n",
	"  - name: a\n    description: a: b\n",
	"  - name: a\n    description: a #b#c\n    ports: []\n    owner: {}\n",
	"  - name: a\n    ports: [1,2 , 3]\n    owner:\n      users: [1]\n    # done\n\n",
	"  - name: a\n    owner:\n    ports: [1]\n",
	"  - name: a\n    owner:\n      users:\n        - 1\n",
	"  - name: a\n    ports: [0x10, 1e3, .inf, -1, null, true, ~]\n",
	"  - name: a\n    ports: [a*b, c@d, \"\"]\n",
	"  - name: \"a\\tb\"\n",
	"  - name: a\n    ports: [1, ]\n",
	"  - name: a\n    ports: [1]#c\n",
	"  - name: a\n   ports: [1]\n",
	"  - name: a\n      ports: [1]\n",
	"-\n  name: a\n",
	"  - name: a\n    description: two\n      lines\n",
	"  - name: a\n...\n",
	"  - name: null\n    true: 1\n    '1': x\n",
	"  - name: a\n    owner: {users: [1], groups: {a: b}}\n",
)

func FuzzScanItem(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		var slab nodeSlab
		got, ok := scanItem(text, 1, &slab)
		if !ok {
			return // yaml.v3 decodes it; nothing to compare
		}
		var doc yaml.Node
		if err := decode(yaml.NewDecoder(bytes.NewReader(text)), &doc); err != nil {
			t.Fatalf("scanned what yaml.v3 refuses (%v):\n%s", err, text)
		}
		if len(doc.Content) != 1 || doc.Content[0].Kind != yaml.SequenceNode || len(doc.Content[0].Content) != 1 {
			t.Fatalf("scanned as one item what yaml.v3 reads as\n%s\n%s", tree(&doc), text)
		}
		if want := doc.Content[0].Content[0]; tree(got) != tree(want) {
			t.Fatalf("scanned\n%s\nyaml.v3\n%s\nof\n%s", tree(got), tree(want), text)
		}
	})
}

// tree prints what the policy parser reads of a node tree.
func tree(n *yaml.Node) string {
	var b strings.Builder
	var walk func(n *yaml.Node, depth int)
	walk = func(n *yaml.Node, depth int) {
		style := n.Style & (yaml.DoubleQuotedStyle | yaml.SingleQuotedStyle | yaml.FlowStyle)
		fmt.Fprintf(&b, "%*s%d %s %q %d:%d style %d anchor %q\n", 2*depth, "", n.Kind, n.ShortTag(), n.Value, n.Line, n.Column, style, n.Anchor)
		for _, c := range n.Content {
			walk(c, depth+1)
		}
	}
	walk(n, 0)
	return b.String()
}

// TestScanItemTakesTheSimpleForms: the forms of portfw's examples and
// generators are scanned, not left to yaml.v3 (or the speed is lost).
func TestScanItemTakesTheSimpleForms(t *testing.T) {
	for _, s := range []string{scanSeeds[0], scanSeeds[2], scanSeeds[4], scanSeeds[5], scanSeeds[6], scanSeeds[9], scanSeeds[10]} {
		var slab nodeSlab
		if _, ok := scanItem([]byte(s), 1, &slab); !ok {
			t.Errorf("not scanned:\n%s", s)
		}
	}
}
