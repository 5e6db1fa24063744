package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Policy is a parsed and validated policy whose owners are still names.
// It is what `portfw check` summarises; Resolve turns it into a Resolved.
type Policy struct {
	File         string
	Settings     Settings // validated, defaults filled in
	Reservations []ReservationSpec
}

// ReservationSpec is one reservation as written. Lists keep the file's
// order and duplicates; Resolve sorts and merges them.
type ReservationSpec struct {
	Name        string
	Description string
	Protocols   []Protocol // tcp and udp when the policy names none
	Ports       []PortRange
	Users       []OwnerRef
	Groups      []OwnerRef
	// Addresses are masked prefixes, IPv4-mapped IPv6 turned into IPv4;
	// empty means every address.
	Addresses []netip.Prefix
	Pos       Pos // the reservation's first key
}

// OwnerRef is one entry of owner.users or owner.groups. It keeps its
// position so that an unknown name, found only by Resolve, is reported
// where it was written.
type OwnerRef struct {
	Name string  // a name to look up; empty when IDs was written as numbers
	IDs  IDRange // meaningful only when Name is empty
	Pos  Pos
}

// Defaults for Settings, as the schema documents them.
const (
	DefaultTable        = "portfw"
	DefaultLogRate      = "10/minute"
	DefaultMarkOwned    = 0x01000000
	DefaultMarkSquatted = 0x02000000
	// MaxID is the largest uid or gid: 4294967295 is (uid_t)-1, which
	// the kernel uses for "no id".
	MaxID = 4294967294
)

var (
	tableRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,31}$`)
	nameRE  = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,63}$`)
	// numericRE tells a mistyped id or port range ("80-", "1-2-3") from a
	// user or group name, so that it gets a range error and not "unknown user".
	numericRE = regexp.MustCompile(`^[0-9\s-]*[0-9][0-9\s-]*$`)
)

var (
	topKeys         = []string{"version", "settings", "reservations"}
	settingsKeys    = []string{"table", "allow_root", "unprivileged_port_start", "log", "marks", "bind_guard"}
	logKeys         = []string{"rate"}
	marksKeys       = []string{"owned", "squatted"}
	reservationKeys = []string{"name", "description", "ports", "protocols", "owner", "addresses"}
	ownerKeys       = []string{"users", "groups"}
)

// Parse parses and validates a policy. It does not look at the host, so
// names of users and groups are not checked here (see Resolve). It reports
// every problem it finds, as Errors.
func Parse(filename string, data []byte) (*Policy, error) {
	p := &parser{file: filename}
	body := p.document(data)
	if body == nil {
		return nil, p.errs.err()
	}
	pol := p.policy(body)
	if err := p.errs.err(); err != nil {
		return nil, err
	}
	return pol, nil
}

type parser struct {
	file string
	errs Errors
}

func (p *parser) pos(n *yaml.Node) Pos {
	// Nodes yaml.v3 makes up have no position; an error must still point
	// somewhere in the file.
	return Pos{File: p.file, Line: max(n.Line, 1), Col: max(n.Column, 1)}
}

func (p *parser) errorf(n *yaml.Node, field, format string, args ...any) {
	p.errs = append(p.errs, &Error{Pos: p.pos(n), Field: field, Msg: fmt.Sprintf(format, args...)})
}

// document decodes data into exactly one YAML document and returns its
// root node, or nil after recording why there is none.
func (p *parser) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := decode(dec, &doc); err != nil {
		if err == io.EOF {
			p.errorf(&doc, "", `empty policy; it must start with "version: 1"`)
		} else {
			p.yamlError(err)
		}
		return nil
	}
	var extra yaml.Node
	switch err := decode(dec, &extra); {
	case err == io.EOF:
	case err != nil:
		p.yamlError(err)
		return nil
	default:
		p.errorf(&extra, "", "more than one YAML document; a policy is a single document")
		return nil
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		p.errorf(&doc, "", `empty policy; it must start with "version: 1"`)
		return nil
	}
	body := doc.Content[0]
	if n := expandedSize(body, map[*yaml.Node]int{}); n > 2*rawSize(body)+100_000 {
		// Walking follows aliases, so a small file could otherwise cost
		// quadratic time (yaml.v3 guards value decoding the same way).
		p.errorf(body, "", "anchors and aliases expand to %d nodes; write the policy out", n)
		return nil
	}
	return body
}

// decode turns a panic inside yaml.v3 into an error: the policy file is
// input, and no input may crash the daemon.
func decode(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: %v", r)
		}
	}()
	return dec.Decode(n)
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): `)

// yamlError records a syntax error. yaml.v3 gives only a line, and none
// for problems on the first line.
func (p *parser) yamlError(err error) {
	msg, line := err.Error(), 1
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		if l, err := strconv.Atoi(m[1]); err == nil && l > 0 {
			line = l
		}
		msg = msg[len(m[0]):]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	p.errs = append(p.errs, &Error{Pos: Pos{File: p.file, Line: line, Col: 1}, Msg: "not valid YAML: " + msg})
}

func rawSize(n *yaml.Node) int {
	size := 1
	for _, c := range n.Content {
		size += rawSize(c)
	}
	return size
}

// expandedSize counts nodes as a walk that follows aliases would see them.
// An alias back into an enclosing node counts once: the walk never
// descends further than the schema, so cycles cannot make it loop.
func expandedSize(n *yaml.Node, memo map[*yaml.Node]int) int {
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return 1
		}
		return expandedSize(n.Alias, memo)
	}
	if len(n.Content) == 0 {
		return 1
	}
	if size, ok := memo[n]; ok {
		return size
	}
	memo[n] = 1 // in progress
	size := 1
	for _, c := range n.Content {
		size += expandedSize(c, memo)
		if size > 1<<40 {
			break
		}
	}
	memo[n] = size
	return size
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; i < 8 && n.Kind == yaml.AliasNode && n.Alias != nil; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = deref(n)
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe says what a node is, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	n = deref(n)
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
	default:
		return "an alias"
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:40] + "..."
	}
	switch n.ShortTag() {
	case "!!null":
		return "nothing"
	case "!!str":
		return fmt.Sprintf("the string %q", v)
	case "!!int", "!!float":
		return "the number " + v
	case "!!bool":
		return v
	}
	return fmt.Sprintf("%q (tagged %s)", v, n.Tag)
}

func (p *parser) wrongType(n *yaml.Node, field, want string) {
	p.errorf(n, field, "expected %s, got %s", want, describe(n))
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

func index(field string, i int) string { return fmt.Sprintf("%s[%d]", field, i) }

// mapping checks that n is a mapping whose keys are all in keys, each at
// most once, and returns its values by key. ok is false when n is not a
// mapping at all.
func (p *parser) mapping(n *yaml.Node, field, want string, keys []string) (vals map[string]*yaml.Node, ok bool) {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		p.wrongType(n, field, want)
		return nil, false
	}
	vals = map[string]*yaml.Node{}
	first := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		switch {
		case k.Kind != yaml.ScalarNode:
			p.errorf(k, field, "expected a key, got %s", describe(k))
		case k.ShortTag() == "!!merge":
			p.errorf(k, field, "merge keys (<<) are not supported; write the fields out")
		case !contains(keys, k.Value):
			msg := fmt.Sprintf("unknown key %q", k.Value)
			if s := suggest(k.Value, keys); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			p.errorf(k, field, "%s; valid keys are %s", msg, strings.Join(keys, ", "))
		case first[k.Value] != nil:
			p.errorf(k, field, "duplicate key %q (first at line %d)", k.Value, first[k.Value].Line)
		default:
			first[k.Value] = k
			vals[k.Value] = v
		}
	}
	return vals, true
}

// sequence returns the items of a list, or nil after recording an error.
func (p *parser) sequence(n *yaml.Node, field, want string) ([]*yaml.Node, bool) {
	n = deref(n)
	if n.Kind != yaml.SequenceNode {
		p.wrongType(n, field, want)
		return nil, false
	}
	return n.Content, true
}

// scalar returns the text of a scalar whose tag is one of tags.
func (p *parser) scalar(n *yaml.Node, field, want string, tags ...string) (string, bool) {
	n = deref(n)
	if n.Kind != yaml.ScalarNode || !contains(tags, n.ShortTag()) {
		p.wrongType(n, field, want)
		return "", false
	}
	return n.Value, true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// suggest returns the key closest to a misspelt one, if any is close.
func suggest(s string, keys []string) string {
	best, bestDist := "", 3
	for _, k := range keys {
		if d := editDistance(s, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (p *parser) policy(n *yaml.Node) *Policy {
	vals, ok := p.mapping(n, "", "a mapping with version, settings and reservations at the top level", topKeys)
	if !ok {
		return nil
	}
	pol := &Policy{File: p.file}
	if v := vals["version"]; v == nil {
		p.errorf(n, "version", `missing; add "version: 1"`)
	} else {
		p.version(v)
	}
	pol.Settings = p.settings(vals["settings"])
	if v := vals["reservations"]; v != nil && !isNull(v) {
		if items, ok := p.sequence(v, "reservations", "a list of reservations"); ok {
			pol.Reservations = p.reservations(items)
		}
	}
	return pol
}

func (p *parser) version(n *yaml.Node) {
	s, ok := p.scalar(n, "version", "the number 1", "!!int")
	if !ok {
		return
	}
	if s != "1" {
		p.errorf(n, "version", "unsupported version %s; only version 1 exists", s)
	}
}

func (p *parser) settings(n *yaml.Node) Settings {
	s := Settings{
		Table:                 DefaultTable,
		AllowRoot:             true,
		UnprivilegedPortStart: "auto",
		LogRate:               DefaultLogRate,
		MarkOwned:             DefaultMarkOwned,
		MarkSquatted:          DefaultMarkSquatted,
	}
	if n == nil || isNull(n) {
		return s
	}
	vals, ok := p.mapping(n, "settings", "a mapping of settings", settingsKeys)
	if !ok {
		return s
	}
	if v := vals["table"]; v != nil {
		if t, ok := p.scalar(v, "settings.table", "a table name", "!!str"); ok {
			if tableRE.MatchString(t) {
				s.Table = t
			} else {
				p.errorf(v, "settings.table", "invalid table name %q; use a letter then up to 31 letters, digits or _", t)
			}
		}
	}
	if v := vals["allow_root"]; v != nil {
		if _, ok := p.scalar(v, "settings.allow_root", "true or false", "!!bool"); ok {
			var b bool
			if err := deref(v).Decode(&b); err == nil {
				s.AllowRoot = b
			} else {
				p.wrongType(v, "settings.allow_root", "true or false")
			}
		}
	}
	if v := vals["unprivileged_port_start"]; v != nil {
		s.UnprivilegedPortStart = p.portStart(v)
	}
	if v := vals["log"]; v != nil {
		s.LogRate = p.log(v)
	}
	if v := vals["marks"]; v != nil && !isNull(v) {
		p.marks(v, &s)
	}
	if v := vals["bind_guard"]; v != nil {
		s.BindGuard = p.bindGuard(v)
	}
	return s
}

func (p *parser) bindGuard(n *yaml.Node) BindGuardMode {
	const field, want = "settings.bind_guard", "off, on or auto"
	v, ok := p.scalar(n, field, want, "!!str", "!!bool")
	if !ok {
		return BindGuardOff
	}
	// YAML 1.1 readers take on and off for booleans; accept true and
	// false too, so that both readings of the file mean the same.
	if deref(n).ShortTag() == "!!bool" {
		var on bool
		if err := deref(n).Decode(&on); err == nil && on {
			return BindGuardOn
		} else if err == nil {
			return BindGuardOff
		}
	}
	switch v {
	case "off":
		return BindGuardOff
	case "on":
		return BindGuardOn
	case "auto":
		return BindGuardAuto
	}
	p.wrongType(n, field, want)
	return BindGuardOff
}

func (p *parser) portStart(n *yaml.Node) string {
	const field, want = "settings.unprivileged_port_start", "auto, keep or a number 0..1024"
	v, ok := p.scalar(n, field, want, "!!str", "!!int")
	if !ok {
		return "auto"
	}
	if deref(n).ShortTag() == "!!str" {
		if v == "auto" || v == "keep" {
			return v
		}
		p.wrongType(n, field, want)
		return "auto"
	}
	x, err := strconv.ParseUint(v, 10, 64)
	switch {
	case err != nil && errors.Is(err, strconv.ErrRange), err == nil && x > 1024:
		p.errorf(n, field, "%s is out of range 0..1024", v)
	case err != nil:
		p.wrongType(n, field, want)
	default:
		return strconv.FormatUint(x, 10)
	}
	return "auto"
}

func (p *parser) log(n *yaml.Node) string {
	n = deref(n)
	switch {
	case isNull(n):
		return DefaultLogRate
	case n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool":
		var on bool
		if err := n.Decode(&on); err != nil {
			p.wrongType(n, "settings.log", "true, false or a mapping with rate")
			return DefaultLogRate
		}
		if on {
			return DefaultLogRate
		}
		return ""
	}
	vals, ok := p.mapping(n, "settings.log", "true, false or a mapping with rate", logKeys)
	if !ok || vals["rate"] == nil {
		return DefaultLogRate
	}
	v := vals["rate"]
	const want = "a rate N/second, N/minute, N/hour or N/day"
	s, ok := p.scalar(v, "settings.log.rate", want, "!!str")
	if !ok {
		return DefaultLogRate
	}
	rate, err := parseRate(s)
	if err != nil {
		p.errorf(v, "settings.log.rate", "invalid rate %q: %v", s, err)
		return DefaultLogRate
	}
	return rate
}

// parseRate returns a log rate in the form nft prints it.
func parseRate(s string) (string, error) {
	num, unit, ok := strings.Cut(s, "/")
	num, unit = strings.TrimSpace(num), strings.TrimSpace(unit)
	if !ok || !contains([]string{"second", "minute", "hour", "day"}, unit) {
		return "", errors.New("use N/second, N/minute, N/hour or N/day")
	}
	if !isDigits(num) {
		return "", errors.New("the count must be a whole number")
	}
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return "", errors.New("the count is too large")
	}
	if n < 1 {
		return "", errors.New("the count must be at least 1")
	}
	return fmt.Sprintf("%d/%s", n, unit), nil
}

func (p *parser) marks(n *yaml.Node, s *Settings) {
	vals, ok := p.mapping(n, "settings.marks", "a mapping with owned and squatted", marksKeys)
	if !ok {
		return
	}
	mark := func(key string, dst *uint32) bool {
		v := vals[key]
		if v == nil {
			return false
		}
		field := "settings.marks." + key
		text, ok := p.scalar(v, field, "a number with one bit set, such as 0x01000000", "!!int")
		if !ok {
			return false
		}
		x, err := strconv.ParseUint(strings.ReplaceAll(text, "_", ""), 0, 32)
		if err != nil || x == 0 || x&(x-1) != 0 {
			p.errorf(v, field, "%s is not a single bit of the 32-bit conntrack mark; use a power of two such as 0x01000000", text)
			return false
		}
		*dst = uint32(x)
		return true
	}
	owned := mark("owned", &s.MarkOwned)
	squatted := mark("squatted", &s.MarkSquatted)
	if s.MarkOwned == s.MarkSquatted {
		at, field := vals["owned"], "settings.marks.owned"
		if squatted || !owned {
			at, field = vals["squatted"], "settings.marks.squatted"
		}
		p.errorf(at, field, "owned and squatted must be different bits (both are 0x%08x)", s.MarkOwned)
	}
}

func (p *parser) reservations(items []*yaml.Node) []ReservationSpec {
	var out []ReservationSpec
	type seen struct {
		line  int
		index int
	}
	first := map[string]seen{}
	for i, item := range items {
		field := index("reservations", i)
		r, nameNode, ok := p.reservation(item, field)
		if !ok {
			continue
		}
		if nameNode != nil {
			if f, dup := first[r.Name]; dup {
				p.errorf(nameNode, field+".name", "duplicate reservation name %q (first at line %d, reservations[%d])", r.Name, f.line, f.index)
			} else {
				first[r.Name] = seen{nameNode.Line, i}
			}
		}
		out = append(out, r)
	}
	return out
}

// reservation parses one reservation. nameNode is nil when the name is
// missing or invalid (and already reported).
func (p *parser) reservation(n *yaml.Node, field string) (r ReservationSpec, nameNode *yaml.Node, ok bool) {
	n = deref(n)
	vals, ok := p.mapping(n, field, "a reservation (a mapping with name, ports and owner)", reservationKeys)
	if !ok {
		return r, nil, false
	}
	r.Pos = p.pos(n)
	if v := vals["name"]; v == nil {
		p.errorf(n, field+".name", "missing; every reservation needs a name")
	} else if s, ok := p.scalar(v, field+".name", "a name", "!!str"); ok {
		if nameRE.MatchString(s) {
			r.Name, nameNode = s, deref(v)
		} else {
			p.errorf(v, field+".name", "invalid name %q; use a letter then up to 63 letters, digits, _, . or -", s)
		}
	}
	if v := vals["description"]; v != nil && !isNull(v) {
		if s, ok := p.scalar(v, field+".description", "a string", "!!str", "!!int", "!!float", "!!bool"); ok {
			r.Description = s
		}
	}
	if v := vals["ports"]; v == nil {
		p.errorf(n, field+".ports", `missing; list the reserved ports, e.g. ports: [80, "8000-8080"]`)
	} else {
		r.Ports = p.ports(v, field+".ports")
	}
	r.Protocols = []Protocol{TCP, UDP}
	if v := vals["protocols"]; v != nil {
		r.Protocols = p.protocols(v, field+".protocols")
	}
	if v := vals["owner"]; v == nil {
		p.errorf(n, field+".owner", "missing; every reservation needs an owner with users and/or groups")
	} else {
		r.Users, r.Groups = p.owner(v, field+".owner")
	}
	if v := vals["addresses"]; v != nil {
		r.Addresses = p.addresses(v, field+".addresses")
	}
	return r, nameNode, true
}

func (p *parser) ports(n *yaml.Node, field string) []PortRange {
	items, ok := p.sequence(n, field, `a list of ports such as [80, "8000-8080"]`)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		p.errorf(n, field, "empty; list at least one port")
		return nil
	}
	var out []PortRange
	for i, item := range items {
		f := index(field, i)
		s, ok := p.scalar(item, f, `a port or a range such as "8000-8080"`, "!!int", "!!float", "!!str")
		if !ok {
			continue
		}
		lo, hi, err := parseRange(s, "port", 1, 65535)
		if err != nil {
			p.errorf(item, f, "%v", err)
			continue
		}
		out = append(out, PortRange{uint16(lo), uint16(hi)})
	}
	return out
}

// parseRange parses "N" or "LO-HI" in decimal, each in min..max. what
// names the thing in errors ("port", "uid").
func parseRange(s, what string, min, max uint64) (lo, hi uint64, err error) {
	num := func(t string) (uint64, error) {
		t = strings.TrimSpace(t)
		x, err := strconv.ParseUint(t, 10, 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return 0, err
		}
		if err != nil || x < min || x > max {
			return 0, fmt.Errorf("%s %s is out of range %d..%d", what, t, min, max)
		}
		return x, nil
	}
	t := strings.TrimSpace(s)
	switch {
	case isDigits(t):
		lo, err = num(t)
		return lo, lo, err
	case strings.HasPrefix(t, "-") && isDigits(t[1:]):
		return 0, 0, fmt.Errorf("%s %s is out of range %d..%d", what, t, min, max)
	}
	a, b, ok := strings.Cut(t, "-")
	if !ok || !isDigits(strings.TrimSpace(a)) || !isDigits(strings.TrimSpace(b)) {
		if strings.Contains(t, "-") && numericRE.MatchString(t) {
			return 0, 0, fmt.Errorf("invalid %s range %q; write it as LO-HI", what, s)
		}
		return 0, 0, fmt.Errorf("%q is not a %s number or LO-HI range", s, what)
	}
	if lo, err = num(a); err != nil {
		return 0, 0, err
	}
	if hi, err = num(b); err != nil {
		return 0, 0, err
	}
	if lo > hi {
		return 0, 0, fmt.Errorf("reversed %s range %q; write the lower %s first", what, s, what)
	}
	return lo, hi, nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func (p *parser) protocols(n *yaml.Node, field string) []Protocol {
	items, ok := p.sequence(n, field, "a list of protocols such as [tcp, udp]")
	if !ok {
		return nil
	}
	if len(items) == 0 {
		p.errorf(n, field, "empty; list tcp and/or udp, or leave protocols out for both")
		return nil
	}
	var out []Protocol
	for i, item := range items {
		f := index(field, i)
		s, ok := p.scalar(item, f, "tcp or udp", "!!str")
		if !ok {
			continue
		}
		switch Protocol(s) {
		case TCP, UDP:
			out = append(out, Protocol(s))
		default:
			p.errorf(item, f, "unknown protocol %q; valid protocols are tcp and udp", s)
		}
	}
	return out
}

func (p *parser) owner(n *yaml.Node, field string) (users, groups []OwnerRef) {
	if isNull(n) {
		p.errorf(n, field, "empty; list at least one user or group")
		return nil, nil
	}
	vals, ok := p.mapping(n, field, "a mapping with users and/or groups", ownerKeys)
	if !ok {
		return nil, nil
	}
	users, uok := p.ids(vals["users"], field+".users", "user", "uid")
	groups, gok := p.ids(vals["groups"], field+".groups", "group", "gid")
	if uok && gok && len(users) == 0 && len(groups) == 0 {
		p.errorf(n, field, "empty; list at least one user or group")
	}
	return users, groups
}

// ids parses a list of names, ids and id ranges. ok is false when an
// entry was wrong, so that the caller does not also call the owner empty.
func (p *parser) ids(n *yaml.Node, field, kind, idName string) (out []OwnerRef, ok bool) {
	if n == nil || isNull(n) {
		return nil, true
	}
	items, ok := p.sequence(n, field, fmt.Sprintf("a list of %s names, %ss or %s ranges", kind, idName, idName))
	if !ok {
		return nil, false
	}
	for i, item := range items {
		f := index(field, i)
		s, good := p.scalar(item, f, fmt.Sprintf("a %s name, %s or %s range", kind, idName, idName), "!!str", "!!int", "!!float")
		if !good {
			ok = false
			continue
		}
		ref := OwnerRef{Pos: p.pos(deref(item))}
		if deref(item).ShortTag() == "!!str" && !numericRE.MatchString(s) {
			if s == "" || strings.TrimSpace(s) != s || strings.ContainsAny(s, ":\n\t\r") {
				p.errorf(item, f, "invalid %s name %q", kind, s)
				ok = false
				continue
			}
			ref.Name = s
		} else {
			lo, hi, err := parseRange(s, idName, 0, MaxID)
			if err != nil {
				p.errorf(item, f, "%v", err)
				ok = false
				continue
			}
			ref.IDs = IDRange{uint32(lo), uint32(hi)}
		}
		out = append(out, ref)
	}
	return out, ok
}

func (p *parser) addresses(n *yaml.Node, field string) []netip.Prefix {
	items, ok := p.sequence(n, field, `a list of addresses or prefixes such as [192.0.2.10, "2001:db8::/64"]`)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		p.errorf(n, field, "empty; leave addresses out to cover every address")
		return nil
	}
	var out []netip.Prefix
	for i, item := range items {
		f := index(field, i)
		s, ok := p.scalar(item, f, "an IP address or prefix", "!!str")
		if !ok {
			continue
		}
		pfx, err := parsePrefix(s)
		if err != nil {
			p.errorf(item, f, "%v", err)
			continue
		}
		out = append(out, pfx)
	}
	return out
}

// parsePrefix parses an address or prefix into a masked prefix. An
// IPv4-mapped IPv6 address becomes plain IPv4 because that is how the
// kernel matches IPv4 traffic on a dual-stack socket.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "%") {
		return netip.Prefix{}, fmt.Errorf("%q has a zone; zones are not allowed, write the address without %%zone", s)
	}
	var pfx netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if pfx, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or prefix", s)
		}
		if m := pfx.Masked(); m != pfx {
			return netip.Prefix{}, fmt.Errorf("%q has host bits set; write %s for the network or %s for the single address", s, m, pfx.Addr())
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or prefix", s)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if a := pfx.Addr(); a.Is4In6() && pfx.Bits() >= 96 {
		pfx = netip.PrefixFrom(a.Unmap(), pfx.Bits()-96)
	}
	return pfx, nil
}
