package bindguard

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
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
	ipprotoUDP   = 17
	ipprotoMPTCP = 262 // binds TCP ports
)

// Stack layout: each key is built in its own slot, every byte written
// before the lookup reads it. Offsets are from the frame pointer R10.
const (
	stConfigKey = -4  // u32 0
	stPortsKey  = -8  // gen, proto, be16 port
	stScopesKey = -32 // prefixlen u32, gen, proto, be16 port, addr[16] (-24..-9)
	stOwnersKey = -48 // gen, kind, u16 0, owner u32 (-44), id u32 (-40)
	stRangesKey = -64 // prefixlen u32, gen (-60), kind, u16 0, owner be32 (-56), id be32 (-52)
)

// Map names, also the names of their pins.
const (
	mapConfig = "config"
	mapPorts  = "ports"
	mapScopes = "scopes"
	mapOwners = "owners"
	mapRanges = "ranges"
)

// program is the bind hook for one family (4 or 6). cookie is the network
// namespace it guards: the program is attached to a cgroup, whose
// processes may bind in any namespace, and sockets of other namespaces must
// pass untouched.
func program(family int, cookie uint64) asm.Instructions {
	const (
		ctx   = asm.R6
		gen   = asm.R7
		owner = asm.R8 // the ownerRef that decides; later also flags
		aux   = asm.R9 // ports value flags, then the caller's uid/gid
	)
	lookup := func(m string, keyOff int16) asm.Instructions {
		return asm.Instructions{
			asm.LoadMapPtr(asm.R1, 0).WithReference(m),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, int32(keyOff)),
			asm.FnMapLookupElem.Call(),
		}
	}
	in := asm.Instructions{
		asm.Mov.Reg(ctx, asm.R1),
		asm.FnGetNetnsCookie.Call(), // R1 is still the context
		asm.LoadImm(asm.R1, int64(cookie), asm.DWord),
		asm.JNE.Reg(asm.R0, asm.R1, "allow"),

		// Protocol: TCP, MPTCP (as TCP) and UDP; every other bind passes.
		asm.LoadMem(asm.R2, ctx, ctxProtocol, asm.Word),
		asm.JNE.Imm(asm.R2, ipprotoMPTCP, "not_mptcp"),
		asm.Mov.Imm(asm.R2, ipprotoTCP),
		asm.JEq.Imm(asm.R2, ipprotoTCP, "proto_ok").WithSymbol("not_mptcp"),
		asm.JNE.Imm(asm.R2, ipprotoUDP, "allow"),

		// Port 0 asks the kernel to pick one: not a reserved port (ephemeral
		// ports are kept off reserved ones by ip_local_reserved_ports).
		asm.LoadMem(asm.R3, ctx, ctxUserPort, asm.Word).WithSymbol("proto_ok"),
		asm.And.Imm(asm.R3, 0xffff),
		asm.JEq.Imm(asm.R3, 0, "allow"),
		asm.StoreMem(asm.RFP, stPortsKey+1, asm.R2, asm.Byte),
		asm.StoreMem(asm.RFP, stPortsKey+2, asm.R3, asm.Half),
		asm.StoreMem(asm.RFP, stScopesKey+5, asm.R2, asm.Byte),
		asm.StoreMem(asm.RFP, stScopesKey+6, asm.R3, asm.Half),

		asm.StoreImm(asm.RFP, stConfigKey, 0, asm.Word),
	}
	in = append(in, lookup(mapConfig, stConfigKey)...)
	in = append(in,
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.LoadMem(gen, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.RFP, stPortsKey, gen, asm.Byte),
		asm.StoreMem(asm.RFP, stScopesKey+4, gen, asm.Byte),
		asm.StoreMem(asm.RFP, stOwnersKey, gen, asm.Byte),
		asm.StoreMem(asm.RFP, stRangesKey+4, gen, asm.Byte),
	)
	in = append(in, lookup(mapPorts, stPortsKey)...)
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
	in = append(in, lookup(mapScopes, stScopesKey)...)
	in = append(in,
		asm.JEq.Imm(asm.R0, 0, "check"), // outside every scope: the default
		asm.LoadMem(owner, asm.R0, 0, asm.Word),

		// Is the caller an owner? Exact uid, exact gid, then the ranges
		// if the set has any.
		asm.JEq.Imm(owner, 0, "allow").WithSymbol("check"),
		asm.FnGetCurrentUidGid.Call(), // gid << 32 | uid, of the binding task
		asm.Mov.Reg(aux, asm.R0),
		asm.StoreImm(asm.RFP, stOwnersKey+2, 0, asm.Half),
		asm.Mov.Reg(asm.R1, owner),
		asm.RSh.Imm(asm.R1, 2),
		asm.StoreMem(asm.RFP, stOwnersKey+4, asm.R1, asm.Word),
		asm.StoreImm(asm.RFP, stOwnersKey+1, kindUID, asm.Byte),
		asm.StoreMem(asm.RFP, stOwnersKey+8, aux, asm.Word),
	)
	in = append(in, lookup(mapOwners, stOwnersKey)...)
	in = append(in,
		asm.JNE.Imm(asm.R0, 0, "owner"),
		asm.StoreImm(asm.RFP, stOwnersKey+1, kindGID, asm.Byte),
		asm.Mov.Reg(asm.R1, aux),
		asm.RSh.Imm(asm.R1, 32),
		asm.StoreMem(asm.RFP, stOwnersKey+8, asm.R1, asm.Word),
	)
	in = append(in, lookup(mapOwners, stOwnersKey)...)
	in = append(in,
		asm.JNE.Imm(asm.R0, 0, "owner"),

		asm.StoreImm(asm.RFP, stRangesKey, rangesKeyBits, asm.Word),
		asm.StoreImm(asm.RFP, stRangesKey+6, 0, asm.Half),
		asm.Mov.Reg(asm.R1, owner),
		asm.RSh.Imm(asm.R1, 2),
		asm.HostTo(asm.BE, asm.R1, asm.Word),
		asm.StoreMem(asm.RFP, stRangesKey+8, asm.R1, asm.Word),

		asm.Mov.Reg(asm.R1, owner),
		asm.And.Imm(asm.R1, refUIDRanges),
		asm.JEq.Imm(asm.R1, 0, "gid_ranges"),
		asm.StoreImm(asm.RFP, stRangesKey+5, kindUID, asm.Byte),
		asm.Mov.Reg(asm.R1, aux),
		asm.HostTo(asm.BE, asm.R1, asm.Word), // also drops the gid half
		asm.StoreMem(asm.RFP, stRangesKey+12, asm.R1, asm.Word),
	)
	in = append(in, lookup(mapRanges, stRangesKey)...)
	in = append(in,
		asm.JNE.Imm(asm.R0, 0, "owner"),

		asm.Mov.Reg(asm.R1, owner).WithSymbol("gid_ranges"),
		asm.And.Imm(asm.R1, refGIDRanges),
		asm.JEq.Imm(asm.R1, 0, "deny"),
		asm.StoreImm(asm.RFP, stRangesKey+5, kindGID, asm.Byte),
		asm.Mov.Reg(asm.R1, aux),
		asm.RSh.Imm(asm.R1, 32),
		asm.HostTo(asm.BE, asm.R1, asm.Word),
		asm.StoreMem(asm.RFP, stRangesKey+12, asm.R1, asm.Word),
	)
	in = append(in, lookup(mapRanges, stRangesKey)...)
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

// programSpec wraps program for loading.
func programSpec(family int, cookie uint64) *ebpf.ProgramSpec {
	attach, name := ebpf.AttachCGroupInet4Bind, "portfw_bind4"
	if family == 6 {
		attach, name = ebpf.AttachCGroupInet6Bind, "portfw_bind6"
	}
	return &ebpf.ProgramSpec{
		Name:         name,
		Type:         ebpf.CGroupSockAddr,
		AttachType:   attach,
		Instructions: program(family, cookie),
		License:      "Dual MIT/GPL",
	}
}
