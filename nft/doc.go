// Package nft is the only part of portfw that talks to the kernel's
// nftables. It applies a compiler.Ruleset as one netlink transaction that
// touches nothing but portfw's own table, reads that table back into the
// same form, and removes it.
//
// Apply and the text form of a Ruleset must give the kernel the same
// table; the kernel round-trip tests prove it by comparing `nft list
// table` after `nft -f` with the listing after Apply.
package nft
