package nftables

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// refAppendElemList is appendElemList as upstream has it (an attribute
// slice per element, netlink.MarshalAttributes), the reference for
// portfw's buffer-appending one.
func (cc *Conn) refAppendElemList(s *Set, vals []SetElement, msgType nftMsgType) error {
	if len(vals) == 0 {
		return nil
	}
	var elements []netlink.Attribute
	batchSize := 0
	var batches [][]netlink.Attribute
	for i, v := range vals {
		encodedItem, err := cc.marshalSetElement(s, &v)
		if err != nil {
			return err
		}
		itemSize := unix.NLA_HDRLEN + len(encodedItem)
		if batchSize+itemSize > maxElemBatchSize {
			batches = append(batches, elements)
			elements = nil
			batchSize = 0
		}
		elements = append(elements, netlink.Attribute{Type: uint16(i+1) | unix.NLA_F_NESTED, Data: encodedItem})
		batchSize += itemSize
	}
	batches = append(batches, elements)
	for _, batch := range batches {
		encodedElem, err := netlink.MarshalAttributes(batch)
		if err != nil {
			return err
		}
		message := []netlink.Attribute{
			{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte(s.Name + "\x00")},
			{Type: unix.NFTA_SET_ELEM_LIST_SET_ID, Data: binaryutil.BigEndian.PutUint32(s.ID)},
			{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte(s.Table.Name + "\x00")},
			{Type: unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED, Data: encodedElem},
		}
		cc.messages = append(cc.messages, netlinkMessage{
			Header: netlink.Header{Type: msgType.HeaderType(), Flags: netlink.Request | netlink.Create},
			Data:   append(extraHeader(uint8(s.Table.Family), 0), cc.marshalAttr(message)...),
		})
	}
	return nil
}

// TestAppendElemListAsUpstream: the messages are byte for byte upstream's,
// for plain elements of every shape, elements the fast path leaves to
// marshalSetElement, and lists long enough for several messages.
func TestAppendElemListAsUpstream(t *testing.T) {
	s := &Set{Table: &Table{Name: "portfw", Family: TableFamilyINet}, Name: "res_port", ID: 7, HasTimeout: true}
	var vals []SetElement
	for i := range 9000 {
		e := SetElement{Key: []byte{byte(i), byte(i >> 8), 0, 0, 6, 0, 0, 0}}
		switch i % 7 {
		case 1:
			e.Comment = fmt.Sprintf("r%05d", i)
		case 2:
			e.KeyEnd, e.Comment = []byte{1, 2, 3}, "a"
		case 3:
			e.IntervalEnd = true
		case 4:
			e.Key, e.Comment = []byte{1, 2, 3, 4, 5}, string(bytes.Repeat([]byte{'x'}, 1+i%300))
		case 5:
			e.IntervalOpen, e.Comment = true, "open"
		case 6:
			e.Val, e.Timeout = []byte{9, 9, 9, 9}, 5e9
		}
		vals = append(vals, e)
	}
	for _, n := range []int{0, 1, 7, len(vals)} {
		got, want := &Conn{}, &Conn{}
		if err := got.appendElemList(s, vals[:n], nftMsgNewSetElem); err != nil {
			t.Fatal(err)
		}
		if err := want.refAppendElemList(s, vals[:n], nftMsgNewSetElem); err != nil {
			t.Fatal(err)
		}
		if len(got.messages) != len(want.messages) {
			t.Fatalf("%d elements: %d messages, upstream %d", n, len(got.messages), len(want.messages))
		}
		for i := range got.messages {
			if got.messages[i].Header != want.messages[i].Header || !bytes.Equal(got.messages[i].Data, want.messages[i].Data) {
				t.Fatalf("%d elements: message %d differs from upstream's", n, i)
			}
		}
		if n == len(vals) && len(got.messages) < 2 {
			t.Fatalf("%d elements in %d message: the split is not tested", n, len(got.messages))
		}
	}
}
