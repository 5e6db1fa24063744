// Package compiler turns a resolved policy into a Ruleset: the nftables
// table that enforces it, as a value.
//
// Compile is pure: no syscalls, files or netlink, and the same input gives
// a byte-identical Ruleset. The Ruleset has one canonical text form (String)
// that `nft -f` accepts; package nft turns the same value into one netlink
// transaction. Keeping both renderings on one small vocabulary of
// expressions (see Expr) is what lets tests prove they agree.
//
// The datapath is O(1) per packet whatever the size of the policy: every
// reservation becomes elements of a fixed handful of sets, exact keys in
// hash sets and true ranges in interval sets, and the number of rules and
// chains depends only on which kinds of set are in use.
package compiler
