package nft

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/parallel"
)

// ErrNoTable is returned by Read when portfw's table is not in the kernel.
var ErrNoTable = errors.New("table not found")

// ErrChanged is returned by Commit when the ruleset's generation is no
// longer the one the transaction was built on: another process committed
// in between, and its change must be read before portfw decides again.
var ErrChanged = errors.New("the nftables ruleset changed since it was read")

// ErrFull is returned by Commit when an element delta would take a set
// past the size it was created with (compiler.Capacity): the table must be
// replaced.
var ErrFull = errors.New("a set of the table is full")

// Kernel is what the rest of portfw needs from the kernel's nftables. Conn
// is the real one; Fake is for tests.
type Kernel interface {
	// Gen returns the ruleset's generation, which every commit by anyone
	// increments.
	Gen() (uint32, error)
	// Read returns the table as the kernel holds it, with set element
	// counters filled in, or an error wrapping ErrNoTable.
	Read(table string) (*compiler.Ruleset, error)
	// ReadSets returns the sets of the table that want names, with their
	// elements and counters, and no chains: what the metrics read at 10k
	// reservations instead of the whole table.
	ReadSets(table string, want func(set string) bool) (*compiler.Ruleset, error)
	// HasTable reports whether the table exists, without reading it.
	HasTable(table string) (bool, error)
	// Commit sends tx as one transaction: all of it or none. With gen not
	// 0 the kernel refuses it (ErrChanged) unless the ruleset is still at
	// that generation. It returns the generation the commit made.
	Commit(tx *Tx, gen uint32) (uint32, error)
}

// Tx is one transaction on portfw's tables, built as a value and committed
// whole. Nothing reaches the kernel (or the library's queue) until Commit
// has encoded every part without error, so a failure can never leave half
// a batch queued on a long-lived connection for the next commit to send.
type Tx struct {
	ops []txOp
	// enc is Encode's result, nil until then or after a change.
	enc    *encoded
	encErr error
	// staged holds enc's commands, queued by Encode on a Conn of its own
	// that never dials; Commit moves them to its connection.
	staged *nftables.Conn
}

// Encode works out the transaction's netlink messages now, not in Commit:
// it is pure (no kernel), so a caller can do it while it waits for
// something else. Commit returns its error. A change to tx after it
// undoes it.
func (tx *Tx) Encode() error {
	tx.enc, tx.encErr = encodeTx(tx)
	tx.staged = nil
	if tx.encErr != nil {
		return tx.encErr
	}
	// The library marshals as it queues (at 100k reservations 140-160 ms):
	// that too is done now, on Conns that never dial, and Commit only
	// moves the messages to its own.
	staged, err := stage(tx.enc)
	if err != nil {
		tx.enc, tx.encErr = nil, err
		return err
	}
	tx.staged = staged
	return nil
}

type txOp struct {
	replace *compiler.Ruleset
	delta   *compiler.Delta
	remove  string
}

// Replace makes the kernel's table equal to rs: created if missing,
// emptied, filled.
func (tx *Tx) Replace(rs *compiler.Ruleset) *Tx { return tx.add(txOp{replace: rs}) }

// Delta deletes and adds set elements of an existing table: deletions
// first, so an element whose key stays and whose comment changes is
// replaced. Every set it names must exist.
func (tx *Tx) Delta(d compiler.Delta) *Tx {
	if !d.Empty() {
		tx.add(txOp{delta: &d})
	}
	return tx
}

// Remove deletes a table if it exists.
func (tx *Tx) Remove(table string) *Tx { return tx.add(txOp{remove: table}) }

// add appends op, undoing an Encode.
func (tx *Tx) add(op txOp) *Tx {
	tx.enc, tx.encErr, tx.staged = nil, nil, nil
	tx.ops = append(tx.ops, op)
	return tx
}

// Empty reports whether the transaction does nothing.
func (tx *Tx) Empty() bool { return tx == nil || len(tx.ops) == 0 }

var _ Kernel = (*Conn)(nil)

// Conn talks nftables over netlink in one network namespace.
type Conn struct {
	nc *nftables.Conn
	// raw is the library's lasting socket, which dumpElements reads set
	// elements from directly. It is used only between the library's
	// operations, never at the same time.
	raw *netlink.Conn
	// second is another socket in the same namespace, opened on the first
	// read of more than one set: the kernel dumps two sets at once, on two
	// CPUs (most of a read is the kernel's walk of the sets).
	netnsFd int
	second  *netlink.Conn
}

// Open connects to nftables in the namespace of the calling process, or in
// the namespace of netnsFd when it is >= 0. The connection is one socket
// kept open until Close: closing a netlink socket after a commit that
// deleted anything waits for nf_tables' cleanup (an RCU grace period,
// measured at 4-33 ms against 0.1 ms for the commit itself).
func Open(netnsFd int) (*Conn, error) {
	c := &Conn{netnsFd: -1}
	keep := func(nl *netlink.Conn) error { c.raw = nl; return nil }
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(socketBuffers, primeDumps, keep)}
	if netnsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
		// A descriptor of its own for the second socket, opened later:
		// the caller may close netnsFd once Open returns.
		d, err := unix.FcntlInt(uintptr(netnsFd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open nftables: %w", err)
		}
		c.netnsFd = d
	}
	nc, err := nftables.New(opts...)
	if err != nil {
		if c.netnsFd >= 0 {
			unix.Close(c.netnsFd)
		}
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	c.nc = nc
	return c, nil
}

// Close closes the connection's sockets.
func (c *Conn) Close() error {
	if c.second != nil {
		c.second.Close()
	}
	if c.netnsFd >= 0 {
		unix.Close(c.netnsFd)
	}
	return c.nc.CloseLasting()
}

// dumpSocket is the second socket, opened (and primed) on first use; nil
// when it cannot be (reads then go one set at a time).
func (c *Conn) dumpSocket() *netlink.Conn {
	if c.second != nil || c.raw == nil {
		return c.second
	}
	cfg := &netlink.Config{}
	if c.netnsFd >= 0 {
		cfg.NetNS = c.netnsFd
	}
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil
	}
	if socketBuffers(nl) != nil || primeDumps(nl) != nil {
		nl.Close()
		return nil
	}
	c.second = nl
	return nl
}

// bufferLimit bounds the socket's send and receive buffers. The library
// sizes them per transaction when it owns the socket's options; with ours
// it leaves them to us. A transaction goes in one sendmsg, which netlink
// refuses beyond the send buffer (a 100k-reservation table is about
// 25 MB), and echoed replies need room on the way back. These are limits,
// not allocations.
const bufferLimit = 256 << 20

func socketBuffers(c *netlink.Conn) error {
	if err := c.SetWriteBuffer(bufferLimit); err != nil {
		return fmt.Errorf("set the netlink send buffer: %w", err)
	}
	if err := c.SetReadBuffer(bufferLimit); err != nil {
		return fmt.Errorf("set the netlink receive buffer: %w", err)
	}
	return nil
}

// dumpChunk is the size of the pieces the kernel dumps a table in.
const dumpChunk = 32 << 10

// primeDumps makes the kernel dump to this socket in 32 KiB pieces instead
// of 4 KiB ones. netlink sizes each piece of a dump by the largest buffer a
// recvmsg on the socket ever offered (capped at 32 KiB), and the library
// receives with a page-sized buffer first; nf_tables restarts its walk of a
// hash set for every piece, so reading a 10k-reservation table took 787
// pieces and 262 ms. One receive with a large buffer, of the answer to a
// request for the ruleset's generation, raises the socket's mark for good.
func primeDumps(c *netlink.Conn) error {
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}, // struct nfgenmsg
	}
	if _, err := c.Send(req); err != nil {
		return fmt.Errorf("prime the netlink socket: %w", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("prime the netlink socket: %w", err)
	}
	buf := make([]byte, dumpChunk)
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		_, _, _, _, rerr = unix.Recvmsg(int(fd), buf, nil, 0)
		return !errors.Is(rerr, unix.EAGAIN)
	}); err != nil {
		return fmt.Errorf("prime the netlink socket: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("prime the netlink socket: %w", rerr)
	}
	return nil
}

func table(name string) *nftables.Table {
	return &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
}

// Gen returns the ruleset's generation.
func (c *Conn) Gen() (uint32, error) {
	g, err := c.nc.GetGen()
	if err != nil {
		return 0, fmt.Errorf("read nftables generation: %w", err)
	}
	return g.ID, nil
}

// encoded is a transaction's operations as the library's objects, ready to
// queue.
type encoded struct {
	steps []step
}

// step queues part of a transaction. One that stands alone (a set and its
// elements, whose transaction id is given up front) may be queued on a
// Conn of its own and appended in its place.
type step struct {
	queue func(nc *nftables.Conn) error
	alone bool
}

func (e *encoded) add(f func(nc *nftables.Conn) error) { e.steps = append(e.steps, step{queue: f}) }

func (e *encoded) addAlone(f func(nc *nftables.Conn) error) {
	e.steps = append(e.steps, step{queue: f, alone: true})
}

// setIDs is where a replace's sets are numbered from, in the transaction:
// above what the library allocates for the rest (from 1).
const setIDs = 1 << 30

// stage queues e on a Conn that never dials: the steps that stand alone
// on one each, on every CPU (a 100k table's two big sets took 140-160 ms
// to marshal, one after the other), the rest in between, in order.
func stage(e *encoded) (*nftables.Conn, error) {
	staged, err := nftables.New()
	if err != nil {
		return nil, err
	}
	var alone []step
	queueAlone := func() error {
		conns := make([]*nftables.Conn, len(alone))
		err := parallel.Each(runtime.GOMAXPROCS(0), len(alone), func(_, i int) error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			conns[i] = c
			return alone[i].queue(c)
		})
		if err != nil {
			return err
		}
		for _, c := range conns {
			staged.Append(c)
		}
		alone = alone[:0]
		return nil
	}
	for _, st := range e.steps {
		if st.alone {
			alone = append(alone, st)
			continue
		}
		if err := queueAlone(); err != nil {
			return nil, err
		}
		if err := st.queue(staged); err != nil {
			return nil, err
		}
	}
	if err := queueAlone(); err != nil {
		return nil, err
	}
	return staged, nil
}

func encodeTx(tx *Tx) (*encoded, error) {
	e := &encoded{}
	for _, op := range tx.ops {
		var err error
		switch {
		case op.replace != nil:
			err = encodeReplace(e, op.replace)
		case op.delta != nil:
			err = encodeDelta(e, *op.delta)
		default:
			t := table(op.remove)
			e.add(func(nc *nftables.Conn) error { nc.AddTable(t); nc.DelTable(t); return nil })
		}
		if err != nil {
			return nil, err
		}
	}
	return e, nil
}

// encodeReplace: create the table if missing, delete it, create it again
// with every set, element, chain and rule.
func encodeReplace(e *encoded, rs *compiler.Ruleset) error {
	t := table(rs.Table)
	e.add(func(nc *nftables.Conn) error { nc.AddTable(t); nc.DelTable(t); nc.AddTable(t); return nil })
	sets := map[string]*nftables.Set{}
	for i, s := range rs.Sets {
		set, err := setHeader(t, s)
		if err != nil {
			return fmt.Errorf("encode table %s: %w", rs.Table, err)
		}
		set.ID = setIDs + uint32(i) // before the rules that name it
		sets[s.Name] = set
		// The elements are made as they are queued: by stage, for each
		// set on a CPU of its own.
		e.addAlone(func(nc *nftables.Conn) error {
			if err := nc.AddSet(set, setElements(s)); err != nil {
				return fmt.Errorf("add set %s: %w", set.Name, err)
			}
			return nil
		})
	}
	chains := map[string]*nftables.Chain{}
	for _, ch := range rs.Chains {
		chains[ch.Name] = newChain(t, ch)
	}
	for _, ch := range rs.Chains {
		kc := chains[ch.Name]
		e.add(func(nc *nftables.Conn) error { nc.AddChain(kc); return nil })
	}
	for _, ch := range rs.Chains {
		for i, r := range ch.Rules {
			exprs, err := encodeRule(r, sets)
			if err != nil {
				return fmt.Errorf("encode table %s: chain %s rule %d: %w", rs.Table, ch.Name, i+1, err)
			}
			rule := &nftables.Rule{Table: t, Chain: chains[ch.Name], Exprs: exprs}
			e.add(func(nc *nftables.Conn) error { nc.AddRule(rule); return nil })
		}
	}
	return nil
}

func encodeDelta(e *encoded, d compiler.Delta) error {
	t := table(d.Table)
	for _, pass := range []struct {
		elems map[string][]compiler.Element
		add   bool
	}{{d.Del, false}, {d.Add, true}} {
		for _, name := range sortedKeys(pass.elems) {
			s, ok := d.Sets[name]
			if !ok {
				return fmt.Errorf("encode delta: no declaration for set %s", name)
			}
			decl := *s
			decl.Elements = pass.elems[name]
			set, elems, err := newSet(t, &decl)
			if err != nil {
				return fmt.Errorf("encode delta: %w", err)
			}
			add := pass.add
			e.add(func(nc *nftables.Conn) error {
				op := nc.SetDeleteElements
				if add {
					op = nc.SetAddElements
				}
				if err := op(set, elems); err != nil {
					return fmt.Errorf("change elements of set %s: %w", set.Name, err)
				}
				return nil
			})
		}
	}
	return nil
}

// Commit sends tx as one transaction (see Kernel).
func (c *Conn) Commit(tx *Tx, gen uint32) (uint32, error) {
	if tx.Empty() {
		return c.Gen()
	}
	if tx.encErr != nil {
		return 0, tx.encErr
	}
	// Queueing marks the encoding's sets with this transaction's ids: it
	// is used once, and a tx committed again is encoded anew.
	if staged := tx.staged; staged != nil {
		tx.enc, tx.staged = nil, nil
		c.nc.Append(staged)
	} else {
		e := tx.enc
		tx.enc = nil
		if e == nil {
			var err error
			if e, err = encodeTx(tx); err != nil {
				return 0, err
			}
		}
		for _, st := range e.steps {
			if err := st.queue(c.nc); err != nil {
				// The library keeps the first error and a flush then discards
				// what was queued instead of sending it.
				_ = c.nc.Flush()
				return 0, err
			}
		}
	}
	if gen == 0 {
		if err := c.nc.Flush(); err != nil {
			return 0, commitError(err)
		}
		return c.Gen()
	}
	if err := c.nc.FlushWithGenID(gen); err != nil {
		return 0, commitError(err)
	}
	// The commit that passed the generation check made the next one.
	next := gen + 1
	if next == 0 {
		next = 1
	}
	return next, nil
}

func commitError(err error) error {
	switch {
	case errors.Is(err, unix.ERESTART):
		return ErrChanged
	case errors.Is(err, unix.ENFILE):
		return fmt.Errorf("commit: %w (%w)", ErrFull, err)
	}
	return fmt.Errorf("commit: %w", err)
}

// Apply replaces portfw's table with rs in one transaction.
func (c *Conn) Apply(rs *compiler.Ruleset) error {
	_, err := c.Commit(new(Tx).Replace(rs), 0)
	return err
}

// ApplyDelta applies element changes in one transaction.
func (c *Conn) ApplyDelta(d compiler.Delta) error {
	_, err := c.Commit(new(Tx).Delta(d), 0)
	return err
}

// HasTable reports whether the table exists.
func (c *Conn) HasTable(name string) (bool, error) {
	if _, err := c.nc.ListTableOfFamily(name, nftables.TableFamilyINet); err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("look up table %s: %w", name, err)
	}
	return true, nil
}

// Remove deletes a table. It reports whether there was one.
func (c *Conn) Remove(name string) (bool, error) {
	ok, err := c.HasTable(name)
	if err != nil || !ok {
		return false, err
	}
	if _, err := c.Commit(new(Tx).Remove(name), 0); err != nil {
		return false, fmt.Errorf("delete table %s: %w", name, err)
	}
	return true, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// ReadOrNil is Read that returns nil, not an error, when the table is
// not installed.
func ReadOrNil(k Kernel, table string) (*compiler.Ruleset, error) {
	rs, err := k.Read(table)
	if errors.Is(err, ErrNoTable) {
		return nil, nil
	}
	return rs, err
}

func newChain(t *nftables.Table, ch *compiler.Chain) *nftables.Chain {
	c := &nftables.Chain{Name: ch.Name, Table: t}
	if ch.Hook != "" {
		accept := nftables.ChainPolicyAccept
		c.Type = nftables.ChainTypeFilter
		c.Priority = nftables.ChainPriorityFilter
		c.Policy = &accept
		c.Hooknum = nftables.ChainHookInput
		if ch.Hook == "output" {
			c.Hooknum = nftables.ChainHookOutput
		}
	}
	return c
}

func isNotFound(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, os.ErrNotExist)
}
