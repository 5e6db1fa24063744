// Package model is portfw's resolved ownership model: which owners (root,
// uids, gids) own which (protocol, port, address), as a value. Resolve
// produces it once; every consumer maps it once: the compiler into the
// nftables table, the bind guard into its maps, the audit into verdicts on
// sockets. Adding an owner kind touches the policy schema, Owners, and each
// consumer's one mapping.
//
// The package is pure and small on purpose: no files, no syscalls and no
// fmt, so `go list -deps ./compiler` holds no os, os/user or syscall. Values
// compare and sort as numbers; text exists only in String methods.
package model
