package bindguard

import (
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/portfw/portfw/model"
)

// Return values of a cgroup bind hook: bit 0 allows the bind (0 makes
// bind() fail with EPERM), bit 1 skips the CAP_NET_BIND_SERVICE check for
// a port below ip_unprivileged_port_start (kernel 5.12). Owners get both:
// the bypass is harmless on a port above the threshold.
const (
	retDeny  = 0
	retAllow = 1
	retOwner = 3
)

// Offsets in struct bpf_sock_addr (include/uapi/linux/bpf.h).
const (
	ctxUserIP4  = 4
	ctxUserIP6  = 8
	ctxUserPort = 24 // network byte order in the low 16 bits
	ctxProtocol = 36
)

const (
	ipprotoTCP   = 6
	ipprotoMPTCP = 262 // binds TCP ports
)

// Stack layout: each key is built in its own slot, every byte written
// before a lookup reads it. Offsets are from the frame pointer R10.
const (
	stNetsKey   = -8  // cookie u64
	stOuterKey  = -24 // cookie u64, gen u32 (-16), 0 u32 (-12)
	stPortsKey  = -28 // proto, 0, be16 port
	stScopesKey = -52 // prefixlen u32, proto (-48), 0, be16 port (-46), addr[16] (-44..-29)
	stOwnersKey = -72 // kind, 0 [3], owner u32 (-68), id u64 (-64): uid, gid or cgroup id
	stRangesKey = -88 // prefixlen u32, kind (-84), 0 [3], owner be32 (-80), id be32 (-76)
)

// Map names, as the kernel shows them (at most 15 characters).
const (
	mapNets   = "pfw2_nets"
	mapPorts  = "pfw2_ports"
	mapScopes = "pfw2_scopes"
	mapOwners = "pfw2_owners"
	mapRanges = "pfw2_ranges"
)

var mapNames = []string{mapNets, mapPorts, mapScopes, mapOwners, mapRanges}

// progName is the program's name for a family; the layout is part of it.
func progName(family int) string {
	return "portfw" + strconv.Itoa(layoutVersion) + "_bind" + strconv.Itoa(family)
}

// program is the bind hook for one family (4 or 6). One program serves
// every network namespace: the socket's namespace cookie picks the maps
// (namespaces portfw has no entry for pass untouched).
func program(family int) asm.Instructions {
	const (
		ctx   = asm.R6
		inner = asm.R7 // the gen, then an inner map
		owner = asm.R8 // the ownerRef that decides
		aux   = asm.R9 // ports value flags, then the caller's uid/gid
	)
	// lookupIn looks key up in the inner map the outer map m holds for
	// the namespace and generation at stOuterKey, failing closed when
	// the namespace has no such map. The value is in R0.
	outer := func(m string) asm.Instructions {
		return asm.Instructions{
			asm.LoadMapPtr(asm.R1, 0).WithReference(m),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, stOuterKey),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "deny"),
		}
	}
	lookupIn := func(mapReg asm.Register, keyOff int16) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R1, mapReg),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, int32(keyOff)),
			asm.FnMapLookupElem.Call(),
		}
	}
	in := asm.Instructions{
		asm.Mov.Reg(ctx, asm.R1),
		asm.FnGetNetnsCookie.Call(), // R1 is still the context
		asm.StoreMem(asm.RFP, stNetsKey, asm.R0, asm.DWord),
		asm.StoreMem(asm.RFP, stOuterKey, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapNets),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stNetsKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"), // a namespace portfw does not guard
		asm.LoadMem(inner, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.RFP, stOuterKey+8, inner, asm.Word),
		asm.StoreImm(asm.RFP, stOuterKey+12, 0, asm.Word),

		// Protocol: MPTCP binds TCP ports; other protocols are looked up
		// by number (TCP, UDP and UDP-Lite have entries).
		asm.LoadMem(asm.R2, ctx, ctxProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, ipprotoMPTCP, "not_mptcp"),
		asm.Mov.Imm(asm.R2, ipprotoTCP),
		asm.JGT.Imm(asm.R2, 255, "allow").WithSymbol("not_mptcp"),

		// Port 0 asks the kernel to pick one: not a reserved port (ephemeral
		// ports are kept off reserved ones by ip_local_reserved_ports).
		asm.LoadMem(asm.R3, ctx, ctxUserPort, asm.Word),
		asm.And.Imm(asm.R3, 0xffff),
		asm.JEq.Imm(asm.R3, 0, "allow"),
		asm.StoreMem(asm.RFP, stPortsKey, asm.R2, asm.Byte),
		asm.StoreImm(asm.RFP, stPortsKey+1, 0, asm.Byte),
		asm.StoreMem(asm.RFP, stPortsKey+2, asm.R3, asm.Half),
		asm.StoreMem(asm.RFP, stScopesKey+4, asm.R2, asm.Byte),
		asm.StoreImm(asm.RFP, stScopesKey+5, 0, asm.Byte),
		asm.StoreMem(asm.RFP, stScopesKey+6, asm.R3, asm.Half),
	}
	in = append(in, outer(mapPorts)...)
	in = append(in, asm.Mov.Reg(inner, asm.R0))
	in = append(in, lookupIn(inner, stPortsKey)...)
	in = append(in,
		asm.JEq.Imm(asm.R0, 0, "allow"),         // not a reserved port
		asm.LoadMem(owner, asm.R0, 0, asm.Word), // default
		asm.LoadMem(aux, asm.R0, 12, asm.Word),  // flags: scoped
	)

	// Pick the owner set for the bound address: the wildcard's, the
	// scope's that contains the address, or the port's default. R0 still
	// points at the ports value.
	if family == 4 {
		in = append(in,
			asm.LoadMem(asm.R2, ctx, ctxUserIP4, asm.Word),
			asm.JNE.Imm(asm.R2, 0, "addr"),
			asm.LoadMem(owner, asm.R0, 4, asm.Word), // wild4
			asm.Ja.Label("check"),
			asm.JEq.Imm(aux, 0, "check").WithSymbol("addr"),
			asm.StoreImm(asm.RFP, stScopesKey+8, 0, asm.Word),
			asm.StoreImm(asm.RFP, stScopesKey+12, 0, asm.Word),
			asm.StoreImm(asm.RFP, stScopesKey+16, -0x10000, asm.Word), // bytes 00 00 ff ff
			asm.StoreMem(asm.RFP, stScopesKey+20, asm.R2, asm.Word),
		)
	} else {
		in = append(in,
			asm.LoadMem(asm.R2, ctx, ctxUserIP6, asm.Word),
			asm.LoadMem(asm.R3, ctx, ctxUserIP6+4, asm.Word),
			asm.LoadMem(asm.R4, ctx, ctxUserIP6+8, asm.Word),
			asm.LoadMem(asm.R5, ctx, ctxUserIP6+12, asm.Word),
			asm.Mov.Reg(asm.R1, asm.R2),
			asm.Or.Reg(asm.R1, asm.R3),
			asm.Or.Reg(asm.R1, asm.R4),
			asm.Or.Reg(asm.R1, asm.R5),
			asm.JNE.Imm(asm.R1, 0, "not_any"),
			asm.LoadMem(owner, asm.R0, 8, asm.Word), // wild6: "::" is dual-stack
			asm.Ja.Label("check"),
			// ::ffff:0.0.0.0 is the IPv4 wildcard on an IPv6 socket.
			asm.Mov.Reg(asm.R1, asm.R2).WithSymbol("not_any"),
			asm.Or.Reg(asm.R1, asm.R3),
			asm.Or.Reg(asm.R1, asm.R5),
			asm.JNE.Imm(asm.R1, 0, "addr"),
			asm.JNE.Imm32(asm.R4, -0x10000, "addr"), // bytes 00 00 ff ff
			asm.LoadMem(owner, asm.R0, 4, asm.Word), // wild4
			asm.Ja.Label("check"),
			asm.JEq.Imm(aux, 0, "check").WithSymbol("addr"),
			asm.StoreMem(asm.RFP, stScopesKey+8, asm.R2, asm.Word),
			asm.StoreMem(asm.RFP, stScopesKey+12, asm.R3, asm.Word),
			asm.StoreMem(asm.RFP, stScopesKey+16, asm.R4, asm.Word),
			asm.StoreMem(asm.RFP, stScopesKey+20, asm.R5, asm.Word),
		)
	}
	in = append(in, asm.StoreImm(asm.RFP, stScopesKey, scopesKeyBits, asm.Word))
	in = append(in, outer(mapScopes)...)
	in = append(in, asm.Mov.Reg(inner, asm.R0))
	in = append(in, lookupIn(inner, stScopesKey)...)
	in = append(in,
		asm.JEq.Imm(asm.R0, 0, "check"), // outside every scope: the default
		asm.LoadMem(owner, asm.R0, 0, asm.Word),

		// Is the caller an owner? Exact uid, exact gid, the cgroups if
		// the set has any, then the ranges if it has any.
		asm.JEq.Imm(owner, 0, "allow").WithSymbol("check"),
		asm.FnGetCurrentUidGid.Call(), // gid << 32 | uid, of the binding task
		asm.Mov.Reg(aux, asm.R0),
	)
	in = append(in, outer(mapOwners)...)
	in = append(in,
		asm.Mov.Reg(inner, asm.R0),
		asm.StoreImm(asm.RFP, stOwnersKey, kindUID, asm.Byte),
		asm.StoreImm(asm.RFP, stOwnersKey+1, 0, asm.Byte),
		asm.StoreImm(asm.RFP, stOwnersKey+2, 0, asm.Half),
		asm.Mov.Reg(asm.R1, owner),
		asm.RSh.Imm(asm.R1, refShift),
		asm.StoreMem(asm.RFP, stOwnersKey+4, asm.R1, asm.Word),
		asm.Mov.Reg32(asm.R1, aux), // the uid: the low half, zero-extended
		asm.StoreMem(asm.RFP, stOwnersKey+8, asm.R1, asm.DWord),
	)
	in = append(in, lookupIn(inner, stOwnersKey)...)
	in = append(in,
		asm.JNE.Imm(asm.R0, 0, "owner"),
		asm.StoreImm(asm.RFP, stOwnersKey, kindGID, asm.Byte),
		asm.Mov.Reg(asm.R1, aux),
		asm.RSh.Imm(asm.R1, 32),
		asm.StoreMem(asm.RFP, stOwnersKey+8, asm.R1, asm.DWord),
	)
	in = append(in, lookupIn(inner, stOwnersKey)...)
	in = append(in, asm.JNE.Imm(asm.R0, 0, "owner"))
	in = append(in, cgroupCheck(inner, owner, lookupIn)...)
	in = append(in,
		asm.Mov.Reg(asm.R1, owner).WithSymbol("ranges"),
		asm.And.Imm(asm.R1, refUIDRanges|refGIDRanges),
		asm.JEq.Imm(asm.R1, 0, "deny"),
	)
	in = append(in, outer(mapRanges)...)
	in = append(in,
		asm.Mov.Reg(inner, asm.R0),
		asm.StoreImm(asm.RFP, stRangesKey, rangesKeyBits, asm.Word),
		asm.StoreImm(asm.RFP, stRangesKey+5, 0, asm.Byte),
		asm.StoreImm(asm.RFP, stRangesKey+6, 0, asm.Half),
		asm.Mov.Reg(asm.R1, owner),
		asm.RSh.Imm(asm.R1, refShift),
		asm.HostTo(asm.BE, asm.R1, asm.Word),
		asm.StoreMem(asm.RFP, stRangesKey+8, asm.R1, asm.Word),

		asm.Mov.Reg(asm.R1, owner),
		asm.And.Imm(asm.R1, refUIDRanges),
		asm.JEq.Imm(asm.R1, 0, "gid_ranges"),
		asm.StoreImm(asm.RFP, stRangesKey+4, kindUID, asm.Byte),
		asm.Mov.Reg(asm.R1, aux),
		asm.HostTo(asm.BE, asm.R1, asm.Word), // also drops the gid half
		asm.StoreMem(asm.RFP, stRangesKey+12, asm.R1, asm.Word),
	)
	in = append(in, lookupIn(inner, stRangesKey)...)
	in = append(in,
		asm.JNE.Imm(asm.R0, 0, "owner"),

		asm.Mov.Reg(asm.R1, owner).WithSymbol("gid_ranges"),
		asm.And.Imm(asm.R1, refGIDRanges),
		asm.JEq.Imm(asm.R1, 0, "deny"),
		asm.StoreImm(asm.RFP, stRangesKey+4, kindGID, asm.Byte),
		asm.Mov.Reg(asm.R1, aux),
		asm.RSh.Imm(asm.R1, 32),
		asm.HostTo(asm.BE, asm.R1, asm.Word),
		asm.StoreMem(asm.RFP, stRangesKey+12, asm.R1, asm.Word),
	)
	in = append(in, lookupIn(inner, stRangesKey)...)
	in = append(in,
		asm.JNE.Imm(asm.R0, 0, "owner"),

		asm.Mov.Imm(asm.R0, retDeny).WithSymbol("deny"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, retOwner).WithSymbol("owner"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, retAllow).WithSymbol("allow"),
		asm.Return(),
	)
	return in
}

// cgroupCheck looks the binding task's cgroup and its ancestors up in the
// owners map (inner, with the owner set's number already in the key at
// stOwnersKey) when the set owns cgroups, and jumps to "owner" on a hit; it
// goes on to "ranges" otherwise. bpf_get_current_ancestor_cgroup_id(level)
// is the id of the task's ancestor at that level of the cgroup v2 hierarchy
// (the task's own cgroup at its own level), 0 below the task's depth: the
// first 0 ends the walk. Levels 1 to model.MaxCgroupLevel, unrolled so the
// verifier sees a bounded program; the root (level 0) owns nothing, so a
// task in the root cgroup, and one in a parent or a sibling of an owner
// cgroup, never finds an owner's id.
func cgroupCheck(inner, owner asm.Register, lookupIn func(asm.Register, int16) asm.Instructions) asm.Instructions {
	in := asm.Instructions{
		asm.Mov.Reg(asm.R1, owner),
		asm.And.Imm(asm.R1, refCgroups),
		asm.JEq.Imm(asm.R1, 0, "ranges"),
		asm.StoreImm(asm.RFP, stOwnersKey, kindCgroup, asm.Byte),
	}
	for level := 1; level <= model.MaxCgroupLevel; level++ {
		in = append(in,
			asm.Mov.Imm(asm.R1, int32(level)),
			asm.FnGetCurrentAncestorCgroupId.Call(),
			asm.JEq.Imm(asm.R0, 0, "ranges"),
			asm.StoreMem(asm.RFP, stOwnersKey+8, asm.R0, asm.DWord),
		)
		in = append(in, lookupIn(inner, stOwnersKey)...)
		in = append(in, asm.JNE.Imm(asm.R0, 0, "owner"))
	}
	return in
}

// programSpec wraps program for loading.
func programSpec(family int) *ebpf.ProgramSpec {
	attach := ebpf.AttachCGroupInet4Bind
	if family == 6 {
		attach = ebpf.AttachCGroupInet6Bind
	}
	return &ebpf.ProgramSpec{
		Name:         progName(family),
		Type:         ebpf.CGroupSockAddr,
		AttachType:   attach,
		Instructions: program(family),
		License:      "Dual MIT/GPL",
	}
}

func attachType(family int) ebpf.AttachType {
	if family == 6 {
		return ebpf.AttachCGroupInet6Bind
	}
	return ebpf.AttachCGroupInet4Bind
}
