package model

import "strconv"

// Protocol is a transport protocol with ports, by its IANA number (what
// nftables' meta l4proto and the cgroup bind hook's ctx->protocol see).
type Protocol uint8

// The protocols a policy may reserve ports of.
const (
	TCP     Protocol = 6
	UDP     Protocol = 17
	UDPLite Protocol = 136
)

// ProtocolInfo is what portfw needs to know about a protocol: the one table
// every package ranges over, so that supporting another protocol is an entry
// here plus its tests.
type ProtocolInfo struct {
	Protocol Protocol
	// Name is the protocol's name in policies, in nft text (/etc/protocols)
	// and in output.
	Name string
	// Stream protocols have listen() and accept(). accept() gives a
	// connection's socket the accepting process's credentials (nginx's
	// workers), so on output an OWNED connection passes before the squatter
	// check; an unattributed RST passes (kernel resets carry no data); and
	// a SYN that carries data (TCP Fast Open) is dropped on input, since
	// the data would reach whatever socket listens before any rule could
	// see its answer. Datagram protocols have no accept(): a packet of a
	// non-owner is dropped even on an OWNED flow.
	Stream bool
	// Flows is true when conntrack keeps flow state for the protocol, so
	// the OWNED and SQUATTED marks hold. UDP-Lite packets are invalid to
	// conntrack while nf_conntrack_checksum=1 (the default): the rules can
	// still drop a squatter's replies, only the bind guard keeps it from
	// reading.
	Flows bool
	// BindHook is true when bind() of the protocol's sockets runs the cgroup
	// bind4/bind6 programs (inet_bind), so the bind guard can refuse it.
	// Protocols with a bind of their own (SCTP) never reach the hook.
	BindHook bool
	// ListenOnly is true when only listening sockets receive new traffic
	// (TCP): the audit ignores connected sockets, whose port came from a
	// listener or an outgoing connection.
	ListenOnly bool
}

var protocols = []ProtocolInfo{
	{Protocol: TCP, Name: "tcp", Stream: true, Flows: true, BindHook: true, ListenOnly: true},
	{Protocol: UDP, Name: "udp", Flows: true, BindHook: true},
	{Protocol: UDPLite, Name: "udplite", BindHook: true},
}

// Protocols returns the protocol table, sorted by number.
func Protocols() []ProtocolInfo { return protocols }

// DefaultProtocols are what a reservation covers when it names none.
var DefaultProtocols = []Protocol{TCP, UDP}

// ProtocolByName finds a protocol by its name.
func ProtocolByName(name string) (Protocol, bool) {
	for _, p := range protocols {
		if p.Name == name {
			return p.Protocol, true
		}
	}
	return 0, false
}

// Info returns the protocol's entry in the table.
func (p Protocol) Info() (ProtocolInfo, bool) {
	for _, i := range protocols {
		if i.Protocol == p {
			return i, true
		}
	}
	return ProtocolInfo{Protocol: p, Name: strconv.Itoa(int(p))}, false
}

// String is the protocol's name, or its number if it has none.
func (p Protocol) String() string {
	i, _ := p.Info()
	return i.Name
}

// ProtocolNames lists the names of the protocol table: "tcp, udp and udplite".
func ProtocolNames() string {
	s := ""
	for i, p := range protocols {
		switch {
		case i == 0:
		case i == len(protocols)-1:
			s += " and "
		default:
			s += ", "
		}
		s += p.Name
	}
	return s
}

// MarshalText writes the protocol's name, so JSON output says "tcp".
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads a protocol name.
func (p *Protocol) UnmarshalText(b []byte) error {
	v, ok := ProtocolByName(string(b))
	if !ok {
		n, err := strconv.ParseUint(string(b), 10, 8)
		if err != nil {
			return errUnknownProtocol
		}
		v = Protocol(n)
	}
	*p = v
	return nil
}
