package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/portfw/portfw/model"
)

// Policy is a parsed and validated policy whose owners are still names.
// It is what `portfw check` summarises; package resolve turns it into the
// ownership model.
type Policy struct {
	File string // the main policy file
	// DropIns are the drop-in files merged into it (Merge), in order.
	DropIns      []string
	Settings     model.Settings // validated, defaults filled in
	Reservations []ReservationSpec
}

// NamesCgroups reports whether some reservation is owned by units or
// cgroups.
func (p *Policy) NamesCgroups() bool {
	for i := range p.Reservations {
		if len(p.Reservations[i].Units)+len(p.Reservations[i].Cgroups) > 0 {
			return true
		}
	}
	return false
}

// Files are the policy's files: the main one, then its drop-ins.
func (p *Policy) Files() []string { return append([]string{p.File}, p.DropIns...) }

// ReservationSpec is one reservation as written. Lists keep the file's
// order and duplicates; resolve sorts and merges them.
type ReservationSpec struct {
	Name        string
	Description string
	Protocols   []model.Protocol // DefaultProtocols when the policy names none
	Ports       []model.PortRange
	Users       []OwnerRef
	Groups      []OwnerRef
	// Units are systemd unit names or patterns ("app@*.service"), Cgroups
	// cgroup v2 paths from the hierarchy's root ("/system.slice/x.service"),
	// both validated; OwnerRef.Name holds the text.
	Units   []OwnerRef
	Cgroups []OwnerRef
	// Addresses are masked prefixes, IPv4-mapped IPv6 turned into IPv4;
	// empty means every address.
	Addresses []netip.Prefix
	Pos       model.Pos // the reservation's first key (Pos.File is its file)
	// Index is where it is in its own file's reservations list, for
	// naming fields ("reservations[3].owner") in a merged policy.
	Index int

	namePos model.Pos // where the name is, for duplicate names
}

// OwnerRef is one entry of owner.users or owner.groups. It keeps its
// position so that an unknown name, found only when resolving, is reported
// where it was written.
type OwnerRef struct {
	Name string        // a name to look up; empty when IDs was written as numbers
	IDs  model.IDRange // meaningful only when Name is empty
	Pos  model.Pos
}

// MaxSize is the largest policy file accepted, checked before parsing: a
// 50 MB policy once took 37 s and 3.2 GB to reject.
const MaxSize = 16 << 20

var (
	topKeys         = []string{"version", "settings", "reservations"}
	settingsKeys    = []string{"table", "allow_root", "unprivileged_port_start", "log", "marks", "bind_guard"}
	logKeys         = []string{"rate"}
	marksKeys       = []string{"owned", "squatted"}
	reservationKeys = []string{"name", "description", "ports", "protocols", "owner", "addresses"}
	ownerKeys       = []string{"users", "groups", "units", "cgroups"}
)

// Parse parses and validates a policy. It does not look at the host, so
// names of users and groups are not checked here. It reports every problem
// it finds (up to MaxErrors), as *Errors.
func Parse(filename string, data []byte) (*Policy, error) {
	return parseFile(filename, data, false)
}

// ParseDropIn parses a drop-in: a file of policy.d, which holds version
// and reservations only (settings belong to the main file, so that no
// package's drop-in can change how every other reservation is enforced).
// Merge adds its reservations to the main policy.
func ParseDropIn(filename string, data []byte) (*Policy, error) {
	return parseFile(filename, data, true)
}

func parseFile(filename string, data []byte, dropIn bool) (*Policy, error) {
	if len(data) <= MaxSize {
		if l := headerLayout(filename, dropIn, data); l != nil {
			if pol, _, ok := l.reparse(filename, data, false); ok {
				return pol, nil
			}
		}
	}
	return parseWhole(filename, data, dropIn)
}

// parseWhole parses data as one document, with every error found; what
// the plain layout's shortcuts (Reparser) must equal.
func parseWhole(filename string, data []byte, dropIn bool) (*Policy, error) {
	p := &parser{file: filename, dropIn: dropIn}
	pol, _ := p.parse(data)
	if err := p.errs.Err(); err != nil {
		return nil, err
	}
	return pol, nil
}

// parse parses a whole file; the problems are in p.errs. body is the
// document's top node, for Reparser.
func (p *parser) parse(data []byte) (pol *Policy, body *yaml.Node) {
	if len(data) > MaxSize {
		p.errs.add(&Error{Pos: model.Pos{File: p.file, Line: 1, Col: 1},
			Msg: fmt.Sprintf("the policy is %d bytes, over the %d-byte (16 MiB) limit", len(data), MaxSize)})
		return nil, nil
	}
	if body = p.document(data); body == nil {
		return nil, nil
	}
	return p.policy(body), body
}

func (p *parser) policy(n *yaml.Node) *Policy {
	vals, ok := p.mapping(n, pathOf(""), "a mapping with version, settings and reservations at the top level", topKeys)
	if !ok {
		return nil
	}
	pol := &Policy{File: p.file}
	if v := vals.get("version"); v == nil {
		p.errorf(n, pathOf("version"), `missing; add "version: 1"`)
	} else {
		p.version(v)
	}
	if v := vals.get("settings"); v != nil && p.dropIn {
		p.errorf(keyNode(n, "settings"), pathOf("settings"), "a drop-in holds only version and reservations; "+
			"settings belong in the main policy file, beside policy.d")
		pol.Settings = model.DefaultSettings()
	} else {
		pol.Settings = p.settings(v)
	}
	if v := vals.get("reservations"); v != nil && !isNull(v) {
		if items, ok := p.sequence(v, pathOf("reservations"), "a list of reservations"); ok {
			pol.Reservations = p.reservations(items)
		}
	}
	return pol
}

func (p *parser) version(n *yaml.Node) {
	s, ok := p.scalar(n, pathOf("version"), "the number 1", "!!int")
	if !ok {
		return
	}
	if s != "1" {
		p.errorf(n, pathOf("version"), "unsupported version %s; only version 1 exists", s)
	}
}

func (p *parser) settings(n *yaml.Node) model.Settings {
	s := model.DefaultSettings()
	if n == nil || isNull(n) {
		return s
	}
	vals, ok := p.mapping(n, pathOf("settings"), "a mapping of settings", settingsKeys)
	if !ok {
		return s
	}
	if v := vals.get("table"); v != nil {
		if t, ok := p.scalar(v, pathOf("settings.table"), "a table name", "!!str"); ok {
			if tableRE.MatchString(t) {
				s.Table = t
			} else {
				p.errorf(v, pathOf("settings.table"), "invalid table name %q; use a letter then up to 31 letters, digits or _", t)
			}
		}
	}
	if v := vals.get("allow_root"); v != nil {
		if b, ok := p.boolean(v, pathOf("settings.allow_root"), "true or false"); ok {
			s.AllowRoot = b
		}
	}
	if v := vals.get("unprivileged_port_start"); v != nil {
		s.PortStart = p.portStart(v)
	}
	if v := vals.get("log"); v != nil {
		s.Log = p.log(v)
	}
	if v := vals.get("marks"); v != nil && !isNull(v) {
		p.marks(v, &s)
	}
	if v := vals.get("bind_guard"); v != nil {
		s.BindGuard = p.bindGuard(v)
	}
	return s
}

func (p *parser) bindGuard(n *yaml.Node) model.BindGuardMode {
	const field, want = "settings.bind_guard", "off, on or auto"
	v, ok := p.scalar(n, pathOf(field), want, "!!str", "!!bool")
	if !ok {
		return model.BindGuardAuto
	}
	// YAML 1.1 readers take on and off for booleans; accept true and
	// false too, so that both readings of the file mean the same.
	if deref(n).ShortTag() == "!!bool" {
		var on bool
		if err := deref(n).Decode(&on); err == nil && on {
			return model.BindGuardOn
		} else if err == nil {
			return model.BindGuardOff
		}
	}
	switch v {
	case "off":
		return model.BindGuardOff
	case "on":
		return model.BindGuardOn
	case "auto":
		return model.BindGuardAuto
	}
	p.wrongType(n, pathOf(field), want)
	return model.BindGuardAuto
}

func (p *parser) portStart(n *yaml.Node) model.PortStart {
	const field, want = "settings.unprivileged_port_start", "auto, keep or a number 0..1024"
	auto := model.PortStart{Mode: model.PortStartAuto}
	v, ok := p.scalar(n, pathOf(field), want, "!!str", "!!int")
	if !ok {
		return auto
	}
	if deref(n).ShortTag() == "!!str" {
		switch v {
		case "auto":
			return auto
		case "keep":
			return model.PortStart{Mode: model.PortStartKeep}
		}
		p.wrongType(n, pathOf(field), want)
		return auto
	}
	x, err := strconv.ParseUint(v, 10, 64)
	switch {
	case err != nil && errors.Is(err, strconv.ErrRange), err == nil && x > 1024:
		p.errorf(n, pathOf(field), "%s is out of range 0..1024", v)
	case err != nil:
		p.wrongType(n, pathOf(field), want)
	default:
		return model.PortStart{Mode: model.PortStartFixed, Value: uint16(x)}
	}
	return auto
}

func (p *parser) log(n *yaml.Node) model.LogRate {
	const want = "true, false or a mapping with rate"
	n = deref(n)
	switch {
	case isNull(n):
		return model.DefaultLog
	case n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool":
		on, ok := p.boolean(n, pathOf("settings.log"), want)
		if ok && !on {
			return model.LogRate{}
		}
		return model.DefaultLog
	}
	vals, ok := p.mapping(n, pathOf("settings.log"), want, logKeys)
	if !ok || vals.get("rate") == nil {
		return model.DefaultLog
	}
	v := vals.get("rate")
	s, ok := p.scalar(v, pathOf("settings.log.rate"), "a rate N/second, N/minute, N/hour or N/day", "!!str")
	if !ok {
		return model.DefaultLog
	}
	rate, err := parseRate(s)
	if err != nil {
		p.errorf(v, pathOf("settings.log.rate"), "invalid rate %q: %v", s, err)
		return model.DefaultLog
	}
	return rate
}

func (p *parser) marks(n *yaml.Node, s *model.Settings) {
	vals, ok := p.mapping(n, pathOf("settings.marks"), "a mapping with owned and squatted", marksKeys)
	if !ok {
		return
	}
	mark := func(key string, dst *uint32) bool {
		v := vals.get(key)
		if v == nil {
			return false
		}
		field := "settings.marks." + key
		text, ok := p.scalar(v, pathOf(field), "a number with one bit set, such as 0x01000000", "!!int")
		if !ok {
			return false
		}
		x, err := strconv.ParseUint(strings.ReplaceAll(text, "_", ""), 0, 32)
		if err != nil || x == 0 || x&(x-1) != 0 {
			p.errorf(v, pathOf(field), "%s is not a single bit of the 32-bit conntrack mark; use a power of two such as 0x01000000", text)
			return false
		}
		*dst = uint32(x)
		return true
	}
	owned := mark("owned", &s.MarkOwned)
	squatted := mark("squatted", &s.MarkSquatted)
	if s.MarkOwned == s.MarkSquatted {
		at, field := vals.get("owned"), "settings.marks.owned"
		if squatted || !owned {
			at, field = vals.get("squatted"), "settings.marks.squatted"
		}
		p.errorf(at, pathOf(field), "owned and squatted must be different bits (both are 0x%08x)", s.MarkOwned)
	}
}

func (p *parser) reservations(items []*yaml.Node) []ReservationSpec {
	out := make([]ReservationSpec, 0, len(items))
	type seen struct {
		line  int
		index int
	}
	first := make(map[string]seen, len(items))
	for i, item := range items {
		field := pathOf("reservations").at(i)
		r, nameNode, ok := p.reservation(item, field)
		if !ok {
			continue
		}
		r.Index = i
		if nameNode != nil {
			if f, dup := first[r.Name]; dup {
				p.errorf(nameNode, field.dot(".name"), "duplicate reservation name %q (first at line %d, reservations[%d])", r.Name, f.line, f.index)
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
func (p *parser) reservation(n *yaml.Node, field fieldPath) (r ReservationSpec, nameNode *yaml.Node, ok bool) {
	n = deref(n)
	vals, ok := p.mapping(n, field, "a reservation (a mapping with name, ports and owner)", reservationKeys)
	if !ok {
		return r, nil, false
	}
	r.Pos = p.pos(n)
	if v := vals.get("name"); v == nil {
		p.errorf(n, field.dot(".name"), "missing; every reservation needs a name")
	} else if s, ok := p.scalar(v, field.dot(".name"), "a name", "!!str"); ok {
		if nameRE.MatchString(s) {
			r.Name, nameNode = s, deref(v)
			r.namePos = p.pos(nameNode)
		} else {
			p.errorf(v, field.dot(".name"), "invalid name %q; use a letter then up to 63 letters, digits, _, . or -", s)
		}
	}
	if v := vals.get("description"); v != nil && !isNull(v) {
		if s, ok := p.scalar(v, field.dot(".description"), "a string", "!!str", "!!int", "!!float", "!!bool"); ok {
			r.Description = s
		}
	}
	if v := vals.get("ports"); v == nil {
		p.errorf(n, field.dot(".ports"), `missing; list the reserved ports, e.g. ports: [80, "8000-8080"]`)
	} else {
		r.Ports = p.ports(v, field.dot(".ports"))
	}
	r.Protocols = model.DefaultProtocols
	if v := vals.get("protocols"); v != nil {
		r.Protocols = p.protocols(v, field.dot(".protocols"))
	}
	if v := vals.get("owner"); v == nil {
		p.errorf(n, field.dot(".owner"), "missing; every reservation needs an owner with users, groups, units or cgroups")
	} else {
		p.owner(&r, v, field.dot(".owner"))
	}
	if v := vals.get("addresses"); v != nil {
		r.Addresses = p.addresses(v, field.dot(".addresses"))
	}
	return r, nameNode, true
}

func (p *parser) ports(n *yaml.Node, field fieldPath) []model.PortRange {
	items, ok := p.sequence(n, field, `a list of ports such as [80, "8000-8080"]`)
	if !ok {
		return nil
	}
	if len(items) == 0 {
		p.errorf(n, field, "empty; list at least one port")
		return nil
	}
	out := make([]model.PortRange, 0, len(items))
	for i, item := range items {
		s, ok := p.scalar(item, field.at(i), `a port or a range such as "8000-8080"`, "!!int", "!!float", "!!str")
		if !ok {
			continue
		}
		lo, hi, err := parseRange(s, "port", 1, 65535)
		if err != nil {
			p.errorf(item, field.at(i), "%v", err)
			continue
		}
		out = append(out, model.PortRange{Lo: uint16(lo), Hi: uint16(hi)})
	}
	return out
}

// protocolNames and protocolEntry are made once, not per reservation.
var (
	protocolNames = model.ProtocolNames()
	protocolEntry = "a protocol name (" + protocolNames + ")"
)

func (p *parser) protocols(n *yaml.Node, field fieldPath) []model.Protocol {
	names := protocolNames
	items, ok := p.sequence(n, field, "a list of protocols such as [tcp, udp]")
	if !ok {
		return nil
	}
	if len(items) == 0 {
		p.errorf(n, field, "empty; list some of %s, or leave protocols out for tcp and udp", names)
		return nil
	}
	var out []model.Protocol
	for i, item := range items {
		s, ok := p.scalar(item, field.at(i), protocolEntry, "!!str")
		if !ok {
			continue
		}
		proto, known := model.ProtocolByName(s)
		if !known {
			p.errorf(item, field.at(i), "unknown protocol %q; valid protocols are %s", s, names)
			continue
		}
		out = append(out, proto)
	}
	return out
}

func (p *parser) owner(r *ReservationSpec, n *yaml.Node, field fieldPath) {
	const empty = "empty; list at least one user, group, unit or cgroup"
	if isNull(n) {
		p.errorf(n, field, empty)
		return
	}
	vals, ok := p.mapping(n, field, "a mapping with users, groups, units and/or cgroups", ownerKeys)
	if !ok {
		return
	}
	var uok, gok, nok, cok bool
	r.Users, uok = p.ids(vals.get("users"), field.dot(".users"), userIDs)
	r.Groups, gok = p.ids(vals.get("groups"), field.dot(".groups"), groupIDs)
	r.Units, nok = p.names(vals.get("units"), field.dot(".units"), `a list of systemd units such as [nginx.service, "app@*.service"]`, checkUnit)
	r.Cgroups, cok = p.names(vals.get("cgroups"), field.dot(".cgroups"), `a list of cgroup paths such as ["/system.slice/app.service"]`, checkCgroup)
	if uok && gok && nok && cok && len(r.Users)+len(r.Groups)+len(r.Units)+len(r.Cgroups) == 0 {
		p.errorf(n, field, empty)
	}
}

// names parses a list of strings, each checked by check (which returns
// why it is invalid, or ""). ok is false when an entry was wrong.
func (p *parser) names(n *yaml.Node, field fieldPath, want string, check func(string) string) (out []OwnerRef, ok bool) {
	if n == nil || isNull(n) {
		return nil, true
	}
	items, ok := p.sequence(n, field, want)
	if !ok {
		return nil, false
	}
	for i, item := range items {
		s, good := p.scalar(item, field.at(i), "a string", "!!str")
		if !good {
			ok = false
			continue
		}
		if why := check(s); why != "" {
			p.errorf(item, field.at(i), "%s", why)
			ok = false
			continue
		}
		out = append(out, OwnerRef{Name: s, Pos: p.pos(deref(item))})
	}
	return out, ok
}

// idKind names users or groups in ids' messages (made once, not per list).
type idKind struct{ kind, id, list, entry string }

var (
	userIDs  = newIDKind("user", "uid")
	groupIDs = newIDKind("group", "gid")
)

func newIDKind(kind, id string) idKind {
	return idKind{kind, id, fmt.Sprintf("a list of %s names, %ss or %s ranges", kind, id, id), fmt.Sprintf("a %s name, %s or %s range", kind, id, id)}
}

// ids parses a list of names, ids and id ranges. ok is false when an
// entry was wrong, so that the caller does not also call the owner empty.
func (p *parser) ids(n *yaml.Node, field fieldPath, k idKind) (out []OwnerRef, ok bool) {
	if n == nil || isNull(n) {
		return nil, true
	}
	kind, idName := k.kind, k.id
	items, ok := p.sequence(n, field, k.list)
	if !ok {
		return nil, false
	}
	for i, item := range items {
		s, good := p.scalar(item, field.at(i), k.entry, "!!str", "!!int", "!!float")
		if !good {
			ok = false
			continue
		}
		ref := OwnerRef{Pos: p.pos(deref(item))}
		if deref(item).ShortTag() == "!!str" && !numericRE.MatchString(s) {
			if s == "" || strings.TrimSpace(s) != s || strings.ContainsAny(s, ":\n\t\r") {
				p.errorf(item, field.at(i), "invalid %s name %q", kind, s)
				ok = false
				continue
			}
			ref.Name = s
		} else {
			lo, hi, err := parseRange(s, idName, 0, model.MaxID)
			if err != nil {
				p.errorf(item, field.at(i), "%v", err)
				ok = false
				continue
			}
			ref.IDs = model.IDRange{Lo: uint32(lo), Hi: uint32(hi)}
		}
		out = append(out, ref)
	}
	return out, ok
}

func (p *parser) addresses(n *yaml.Node, field fieldPath) []netip.Prefix {
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
		s, ok := p.scalar(item, field.at(i), "an IP address or prefix", "!!str")
		if !ok {
			continue
		}
		pfx, err := parsePrefix(s)
		if err != nil {
			p.errorf(item, field.at(i), "%v", err)
			continue
		}
		out = append(out, pfx)
	}
	return out
}
