package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/internal/parallel"
)

// Attribute numbers x/sys/unix does not have (include/uapi/linux/
// netfilter/nf_tables.h, linux/netlink.h).
const (
	nftaSetElemKeyEnd      = 10
	nftaSetElemExpressions = 11
	nlaTypeMask            = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
)

// dumpSets reads the elements of every set, two at a time when there are
// several and a second socket can be had (see Conn.second).
func (c *Conn) dumpSets(table string, sets []*compiler.Set) error {
	if c.raw == nil && len(sets) > 0 {
		return errors.New("no netlink socket to dump with")
	}
	socks := []*netlink.Conn{c.raw}
	if len(sets) > 1 {
		if second := c.dumpSocket(); second != nil {
			socks = append(socks, second)
		}
	}
	return parallel.Each(len(socks), len(sets), func(w, i int) error {
		if err := dumpElements(socks[w], table, sets[i]); err != nil {
			return fmt.Errorf("read elements of set %s: %w", sets[i].Name, err)
		}
		return nil
	})
}

// dumpElements reads every element of a set straight into the compiler's
// vocabulary. It replaces the library's GetSetElements on the read path:
// that one decodes each element into a SetElement of copied byte slices and
// a parsed counter expression first, which at 10k reservations (60k
// elements) cost more than the kernel's own dump. The attributes are
// walked in place; only the comments are copied out.
func dumpElements(nl *netlink.Conn, table string, s *compiler.Set) error {
	var data []byte
	data = appendAttr(data, unix.NFTA_SET_ELEM_LIST_TABLE, append([]byte(table), 0))
	data = appendAttr(data, unix.NFTA_SET_ELEM_LIST_SET, append([]byte(s.Name), 0))
	req, err := nl.Send(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, data...),
	})
	if err != nil {
		return err
	}
	return receiveDump(nl, req.Header.Sequence, func(m []byte) error {
		if len(m) < 4 {
			return nil
		}
		for typ, list := range attrs(m[4:]) {
			if typ != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				continue
			}
			for typ, elem := range attrs(list) {
				if typ != unix.NFTA_LIST_ELEM {
					continue
				}
				if err := decodeListElem(s, elem); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// receiveDump reads the answer to the dump request seq and hands each
// message's payload to f, until NLMSG_DONE. It receives straight into one
// buffer larger than any piece the kernel sends (dumpChunk, after
// primeDumps), where the netlink package would peek at each piece with
// growing buffers first: five copies of every piece instead of one.
func receiveDump(nl *netlink.Conn, seq uint32, f func([]byte) error) error {
	rc, err := nl.SyscallConn()
	if err != nil {
		return err
	}
	buf := make([]byte, 2*dumpChunk)
	for {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, _, _, _, rerr = unix.Recvmsg(int(fd), buf, nil, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		}); err != nil {
			return err
		}
		if rerr != nil {
			return rerr
		}
		b := buf[:n]
		for len(b) >= unix.NLMSG_HDRLEN {
			h := (*unix.NlMsghdr)(unsafe.Pointer(&b[0]))
			size := int(h.Len)
			if size < unix.NLMSG_HDRLEN || size > len(b) {
				return fmt.Errorf("netlink: malformed message of %d bytes", size)
			}
			payload := b[unix.NLMSG_HDRLEN:size]
			if h.Seq == seq {
				switch h.Type {
				case unix.NLMSG_DONE:
					return nil
				case unix.NLMSG_ERROR:
					if len(payload) >= 4 {
						if errno := int32(binary.NativeEndian.Uint32(payload)); errno != 0 {
							return unix.Errno(-errno)
						}
					}
				default:
					if err := f(payload); err != nil {
						return err
					}
				}
			}
			size = (size + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
			if size > len(b) {
				break
			}
			b = b[size:]
		}
	}
}

// decodeListElem decodes one NFTA_LIST_ELEM and appends it to s (an
// interval's end marker, which only sets without KEY_END send, is skipped).
func decodeListElem(s *compiler.Set, b []byte) error {
	var key, end, comment []byte
	var packets, bytes uint64
	counter := false
	for typ, v := range attrs(b) {
		switch typ {
		case unix.NFTA_SET_ELEM_KEY:
			key = dataValue(v)
		case nftaSetElemKeyEnd:
			end = dataValue(v)
		case unix.NFTA_SET_ELEM_FLAGS:
			if len(v) == 4 && binary.BigEndian.Uint32(v)&unix.NFT_SET_ELEM_INTERVAL_END != 0 {
				return nil
			}
		case unix.NFTA_SET_ELEM_USERDATA:
			comment = udataComment(v)
		case unix.NFTA_SET_ELEM_EXPR:
			packets, bytes, counter = counterExpr(v)
		case nftaSetElemExpressions:
			for typ, x := range attrs(v) {
				if typ == unix.NFTA_LIST_ELEM {
					if p, b, ok := counterExpr(x); ok {
						packets, bytes, counter = p, b, true
					}
				}
			}
		}
	}
	if key == nil {
		return fmt.Errorf("read set %s: an element without a key", s.Name)
	}
	e, err := decodeKey(s, key, end)
	if err != nil {
		return fmt.Errorf("read set %s: %w", s.Name, err)
	}
	e.Comment = string(comment)
	if counter {
		s.Counter = true
		e.Packets, e.Bytes = packets, bytes
	}
	if s.Dynamic {
		s.Counts = append(s.Counts, e)
		return nil
	}
	s.Elements = append(s.Elements, e)
	return nil
}

// dataValue is the value inside an NFTA_DATA nest.
func dataValue(b []byte) []byte {
	for typ, v := range attrs(b) {
		if typ == unix.NFTA_DATA_VALUE {
			return v
		}
	}
	return nil
}

// counterExpr reads a counter expression: NFTA_EXPR_NAME "counter" and
// its NFTA_EXPR_DATA.
func counterExpr(b []byte) (packets, bytes uint64, ok bool) {
	var data []byte
	for typ, v := range attrs(b) {
		switch typ {
		case unix.NFTA_EXPR_NAME:
			ok = string(trimNUL(v)) == "counter"
		case unix.NFTA_EXPR_DATA:
			data = v
		}
	}
	if !ok {
		return 0, 0, false
	}
	for typ, v := range attrs(data) {
		if len(v) != 8 {
			continue
		}
		switch typ {
		case unix.NFTA_COUNTER_BYTES:
			bytes = binary.BigEndian.Uint64(v)
		case unix.NFTA_COUNTER_PACKETS:
			packets = binary.BigEndian.Uint64(v)
		}
	}
	return packets, bytes, true
}

// udataComment finds the comment in an element's user data, a list of
// {type u8, len u8, value} records as libnftnl writes them.
func udataComment(b []byte) []byte {
	const commentType = 0 // NFTNL_UDATA_SET_ELEM_COMMENT
	for len(b) >= 2 {
		typ, n := b[0], int(b[1])
		if len(b) < 2+n {
			return nil
		}
		if typ == commentType {
			return trimNUL(b[2 : 2+n])
		}
		b = b[2+n:]
	}
	return nil
}

func trimNUL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == 0 {
		return b[:n-1]
	}
	return b
}

// attrs iterates the netlink attributes in b: type (flags masked off) and
// value, in place. It stops at the first malformed one.
func attrs(b []byte) func(yield func(uint16, []byte) bool) {
	return func(yield func(uint16, []byte) bool) {
		for len(b) >= unix.SizeofNlAttr {
			n := int(binary.NativeEndian.Uint16(b))
			typ := binary.NativeEndian.Uint16(b[2:]) & nlaTypeMask
			if n < unix.SizeofNlAttr || n > len(b) {
				return
			}
			if !yield(typ, b[unix.SizeofNlAttr:n]) {
				return
			}
			n = (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
			if n > len(b) {
				return
			}
			b = b[n:]
		}
	}
}

func appendAttr(b []byte, typ uint16, v []byte) []byte {
	n := unix.SizeofNlAttr + len(v)
	b = binary.NativeEndian.AppendUint16(b, uint16(n))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for n%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
		n++
	}
	return b
}
